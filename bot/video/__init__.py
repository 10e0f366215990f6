"""Meeting links for booked calls: Jitsi Meet, BigBlueButton or Nextcloud Talk.

    provider = build_provider(config.video, session, now=clock)
    meeting = await provider.create_meeting(booking_id=…, title="Support SP-2026-0042", …)
    # meeting.client_url → the client; meeting.staff_url → the staff room (moderator)
    await provider.prepare(meeting)  # shortly before the call (BigBlueButton re-creates)
    await provider.end_meeting(meeting)  # once the call is cancelled or over, after the commit

Every failure is a `VideoError(key, detail)`: show staff the key and detail, the client a
generic message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import aiohttp

from bot.config import VideoConfig
from bot.video.base import Meeting, VideoError, VideoProvider
from bot.video.bigbluebutton import BigBlueButtonProvider
from bot.video.jitsi import JitsiProvider
from bot.video.nextcloud_talk import NextcloudTalkProvider

__all__ = [
    "BigBlueButtonProvider",
    "JitsiProvider",
    "Meeting",
    "NextcloudTalkProvider",
    "VideoError",
    "VideoProvider",
    "build_provider",
]


def build_provider(
    video_config: VideoConfig,
    session: aiohttp.ClientSession,
    *,
    now: Callable[[], datetime],
) -> VideoProvider:
    """The configured provider. `now` (time-zone aware) dates tokens and expiries.

    Raises `VideoError("notConfigured", …)` when the chosen provider's settings are unusable.
    """
    if video_config.provider == "jitsi":
        return JitsiProvider(video_config.jitsi, now=now)
    if video_config.provider == "bigbluebutton":
        return BigBlueButtonProvider(video_config.bigbluebutton, session, now=now)
    if video_config.provider == "nextcloud_talk":
        return NextcloudTalkProvider(video_config.nextcloud_talk, session, now=now)
    raise VideoError("notConfigured", f"unknown video provider {video_config.provider!r}")
