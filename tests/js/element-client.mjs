// A Matrix user on Element's own SDK (matrix-js-sdk, Rust crypto), driven by the Python tests
// (tests/e2e/element_sdk.py) over stdin/stdout.
//
// Protocol: one JSON object per line. Python writes commands `{"id": 1, "cmd": "send", ...}`;
// the driver answers each with `{"id": 1, "ok": true, "result": ...}` or
// `{"id": 1, "ok": false, "error": "..."}`, in order. Nothing else goes to stdout: the SDK's
// own logging is sent to stderr, which the tests keep in a file.
//
// Commands:
//   start {homeserver, user_id, password, isolation: "all"|"only_signed",
//          blacklist_unverified: bool, cross_sign: bool}
//       log in (a new device), set up Rust crypto with an in-memory store, optionally bootstrap
//       this user's own cross-signing (password for the interactive auth), set the modes, sync.
//   create_dm {invite, timeout_ms}      an encrypted direct chat, as Element creates one;
//                                       answers once the invitee has joined
//   send {room_id, text}                an m.text message (encrypted by the SDK)
//   wait_for {room_id, sender, contains: [..], timeout_ms}
//       the next message of `sender` (not taken by an earlier wait_for) whose decrypted body
//       contains every string; fails on timeout with what was seen
//   messages {room_id, sender}          every message of `sender` in the room, as seen now
//       A message is {event_id, sender, type, msgtype, body, encrypted, decrypted,
//       failure (a DecryptionFailureCode, or null), failed_before (a decryption of it ever
//       failed), shield ("NONE" | "GREY" | "RED", from getEncryptionInfoForEvent),
//       shield_reason (an EventShieldReason name, or null)}; {event_id, sender, pending: true}
//       until its decryption has ended.
//   identity {user_id}                  that user's cross-signing identity and devices as this
//                                       client sees them
//   stop                                stop syncing and exit

import { Console } from "node:console";
import { createInterface } from "node:readline";

// Before anything logs: the SDK's logger writes through `console`, and stdout is the protocol.
globalThis.console = new Console({ stdout: process.stderr, stderr: process.stderr });

const sdk = await import("matrix-js-sdk");
const cryptoApi = await import("matrix-js-sdk/lib/crypto-api/index.js");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel(process.env.ELEMENT_CLIENT_LOG_LEVEL || "warn");

const state = {
    client: null,
    crypto: null,
    password: null,
    // room id -> array of records (the messages of other users, in timeline order)
    rooms: new Map(),
    // room id -> set of event ids already returned by wait_for
    taken: new Map(),
    waiters: new Set(),
};

function reply(message) {
    process.stdout.write(JSON.stringify(message) + "\n");
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

async function until(what, timeoutMs, check, intervalMs = 100) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
        await sleep(intervalMs);
    }
}

// -- what this user sees of each message -----------------------------------------------------

async function describe(event) {
    const record = {
        event_id: event.getId(),
        sender: event.getSender(),
        encrypted: event.isEncrypted(),
        decrypted: false,
        failure: null,
        type: event.getType(),
        msgtype: null,
        body: null,
        shield: null,
        shield_reason: null,
    };
    if (event.isDecryptionFailure()) {
        record.failure = event.decryptionFailureReason ?? "UNKNOWN";
        return record;
    }
    const content = event.getContent();
    record.decrypted = event.isEncrypted();
    record.msgtype = content.msgtype ?? null;
    record.body = typeof content.body === "string" ? content.body : null;
    if (event.isEncrypted()) {
        const info = await state.crypto.getEncryptionInfoForEvent(event);
        if (info) {
            record.shield = cryptoApi.EventShieldColour[info.shieldColour];
            record.shield_reason =
                info.shieldReason === null ? null : cryptoApi.EventShieldReason[info.shieldReason];
        }
    }
    return record;
}

async function remember(event, room) {
    if (event.getSender() === state.client.getUserId()) return;
    const type = event.getWireType();
    if (type !== "m.room.message" && type !== "m.room.encrypted") return;
    if (!state.rooms.has(room.roomId)) state.rooms.set(room.roomId, []);
    const records = state.rooms.get(room.roomId);
    // Its place in the timeline is taken now; what it says is filled in once decrypted.
    records.push({ event_id: event.getId(), sender: event.getSender(), pending: true });
    // A message that failed first and was decrypted later (its key came late) counts as
    // readable, but that it failed once is kept (`failed_before`). Of updates that overlap,
    // the last one started wins.
    let generation = 0;
    let failedOnce = false;
    const update = async () => {
        const mine = ++generation;
        const record = await describe(event);
        failedOnce ||= record.failure !== null;
        if (mine !== generation) return;
        record.failed_before = failedOnce;
        records[records.findIndex((r) => r.event_id === record.event_id)] = record;
        for (const waiter of state.waiters) waiter();
    };
    event.on(sdk.MatrixEventEvent.Decrypted, () => void update());
    await state.client.decryptEventIfNeeded(event);
    await update();
}

// -- commands --------------------------------------------------------------------------------

async function authWithPassword(makeRequest) {
    // MSC3967: a first upload of cross-signing keys may need no interactive auth.
    try {
        return await makeRequest(null);
    } catch (error) {
        const session = error?.data?.session;
        if (error?.httpStatus !== 401 || !session) throw error;
        return await makeRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: state.client.getUserId() },
            password: state.password,
            session,
        });
    }
}

const commands = {
    async start({
        homeserver,
        user_id,
        password,
        isolation = "all",
        blacklist_unverified = false,
        cross_sign = false,
    }) {
        const anonymous = sdk.createClient({ baseUrl: homeserver });
        const login = await anonymous.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: user_id },
            password,
            initial_device_display_name: "Element SDK test client",
        });
        const client = sdk.createClient({
            baseUrl: homeserver,
            userId: login.user_id,
            deviceId: login.device_id,
            accessToken: login.access_token,
        });
        state.client = client;
        state.password = password;
        await client.initRustCrypto({ useIndexedDB: false });
        const crypto = client.getCrypto();
        state.crypto = crypto;
        if (isolation === "only_signed") {
            crypto.setDeviceIsolationMode(new cryptoApi.OnlySignedDevicesIsolationMode());
        } else if (isolation === "all") {
            crypto.setDeviceIsolationMode(new cryptoApi.AllDevicesIsolationMode(false));
        } else {
            throw new Error(`unknown isolation mode ${isolation}`);
        }
        crypto.globalBlacklistUnverifiedDevices = Boolean(blacklist_unverified);

        client.on(sdk.RoomEvent.Timeline, (event, room, toStartOfTimeline) => {
            if (room && !toStartOfTimeline) void remember(event, room);
        });
        const prepared = new Promise((resolve, reject) => {
            client.on(sdk.ClientEvent.Sync, (syncState, _previous, data) => {
                if (syncState === "PREPARED") resolve();
                if (syncState === "ERROR" && !client.isInitialSyncComplete()) {
                    reject(data?.error ?? new Error("the first sync failed"));
                }
            });
        });
        await client.startClient({ initialSyncLimit: 20 });
        await prepared;
        if (cross_sign) {
            await crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: authWithPassword });
        }
        const own = await crypto.getOwnDeviceKeys();
        return {
            user_id: login.user_id,
            device_id: login.device_id,
            crypto: crypto.getVersion(),
            cross_signing_ready: await crypto.isCrossSigningReady(),
            master_key: await crypto.getCrossSigningKeyId(),
            ed25519: own.ed25519,
        };
    },

    async create_dm({ invite, timeout_ms = 30000 }) {
        const client = state.client;
        const { room_id } = await client.createRoom({
            is_direct: true,
            invite: [invite],
            preset: sdk.Preset.TrustedPrivateChat,
            initial_state: [
                {
                    type: "m.room.encryption",
                    state_key: "",
                    content: { algorithm: "m.megolm.v1.aes-sha2" },
                },
            ],
        });
        // As Element does: the room is marked direct in the user's account data.
        const direct = client.getAccountData(sdk.EventType.Direct)?.getContent() ?? {};
        direct[invite] = [...(direct[invite] ?? []), room_id];
        await client.setAccountData(sdk.EventType.Direct, direct);
        await until(`${invite} joined ${room_id}`, timeout_ms, () => {
            const room = client.getRoom(room_id);
            return room?.getMember(invite)?.membership === "join";
        });
        if (!(await state.crypto.isEncryptionEnabledInRoom(room_id))) {
            throw new Error(`${room_id} is not encrypted for this client`);
        }
        return { room_id };
    },

    async send({ room_id, text }) {
        const { event_id } = await state.client.sendTextMessage(room_id, text);
        return { event_id };
    },

    async wait_for({ room_id, sender, contains = [], timeout_ms = 30000 }) {
        if (!state.taken.has(room_id)) state.taken.set(room_id, new Set());
        const taken = state.taken.get(room_id);
        const find = () =>
            (state.rooms.get(room_id) ?? []).find(
                (r) =>
                    r.sender === sender &&
                    !taken.has(r.event_id) &&
                    typeof r.body === "string" &&
                    contains.every((part) => r.body.includes(part)),
            );
        let wake;
        const waiter = () => wake?.();
        state.waiters.add(waiter);
        try {
            const deadline = Date.now() + timeout_ms;
            for (;;) {
                const found = find();
                if (found) {
                    taken.add(found.event_id);
                    return found;
                }
                const left = deadline - Date.now();
                if (left <= 0) {
                    const seen = (state.rooms.get(room_id) ?? []).filter((r) => r.sender === sender);
                    throw new Error(
                        `no message of ${sender} containing ${JSON.stringify(contains)} ` +
                            `within ${timeout_ms} ms; seen: ${JSON.stringify(seen)}`,
                    );
                }
                await new Promise((resolve) => {
                    wake = resolve;
                    setTimeout(resolve, Math.min(left, 500));
                });
            }
        } finally {
            state.waiters.delete(waiter);
        }
    },

    async messages({ room_id, sender }) {
        return (state.rooms.get(room_id) ?? []).filter((r) => !sender || r.sender === sender);
    },

    async identity({ user_id }) {
        const crypto = state.crypto;
        const devices = (await crypto.getUserDeviceInfo([user_id], true)).get(user_id) ?? new Map();
        const keys = await crypto.getUserCrossSigningKeys(user_id);
        const master = keys?.master_key ? Object.values(keys.master_key.keys)[0] : null;
        const status = await crypto.getUserVerificationStatus(user_id);
        const described = [];
        for (const deviceId of devices.keys()) {
            const device = await crypto.getDeviceVerificationStatus(user_id, deviceId);
            described.push({
                device_id: deviceId,
                signed_by_owner: device?.signedByOwner ?? false,
                cross_signing_verified: device?.crossSigningVerified ?? false,
                verified: device?.isVerified() ?? false,
            });
        }
        return {
            master_key: master,
            known: status.known,
            cross_signing_verified: status.isCrossSigningVerified(),
            was_cross_signing_verified: status.wasCrossSigningVerified(),
            needs_user_approval: status.needsUserApproval,
            devices: described,
        };
    },

    async stop() {
        state.client?.stopClient();
        setTimeout(() => process.exit(0), 50);
        return {};
    },
};

// -- the loop --------------------------------------------------------------------------------

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
    if (!line.trim()) continue;
    let id = null;
    try {
        const message = JSON.parse(line);
        id = message.id ?? null;
        const command = commands[message.cmd];
        if (!command) throw new Error(`unknown command ${message.cmd}`);
        reply({ id, ok: true, result: (await command(message)) ?? null });
    } catch (error) {
        const detail = error?.data ? ` ${JSON.stringify(error.data)}` : "";
        reply({ id, ok: false, error: `${error?.name ?? "Error"}: ${error?.message}${detail}` });
    }
}
state.client?.stopClient();
process.exit(0);
