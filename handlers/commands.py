"""General commands: help (generated from the registry), language, terms."""

from __future__ import annotations

from bot.i18n import N_, SUPPORTED_LOCALES, Msg, normalize_locale
from bot.routing import Context, Router
from bot.storage.repo import set_locale

router = Router("commands")


@router.command("help", "aide", help=N_("Show the commands I understand."))
async def show_help(ctx: Context) -> None:
    registry = ctx.router or router  # the whole registry: every module's commands
    client_lines: list[str] = []
    staff_lines: list[str] = []
    for spec in registry.commands:
        names = " / ".join(f"!{name}" for name in spec.names)
        usage = f" {spec.usage}" if spec.usage else ""
        line = f"{names}{usage} — {ctx.tr.gettext(spec.help)}"
        (staff_lines if spec.staff else client_lines).append(line)
    parts = [ctx.tr.gettext(N_("Here is what I understand:")), *client_lines]
    if ctx.is_staff and staff_lines:
        parts += ["", ctx.tr.gettext(N_("Staff commands:")), *staff_lines]
    parts += [
        "",
        ctx.tr.gettext(
            N_("To ask for help, simply describe your problem in a message: I will guide you.")
        ),
    ]
    ctx.reply("\n".join(parts))


@router.command("lang", "langue", help=N_("Choose my language: fr or en."), usage="fr|en")
async def choose_language(ctx: Context) -> None:
    locale = normalize_locale(ctx.args.split()[0]) if ctx.args.strip() else None
    if locale is None:
        ctx.reply(
            Msg(
                N_("Please choose one of these languages: {choices}. Example: !lang en"),
                {"choices": ", ".join(SUPPORTED_LOCALES)},
            )
        )
        return
    await set_locale(ctx.sender.key, locale)
    ctx.tr = ctx.services.catalogs.get(locale)
    ctx.reply(Msg(N_("Understood, I will now write to you in English.")))


@router.command("terms", "conditions", help=N_("Show the service terms."))
async def show_terms(ctx: Context) -> None:
    ctx.reply(
        Msg(
            N_(
                "Support is sold as tickets. One ticket solves one single problem and covers "
                "at most one hour; each started hour is one more ticket. Messaging assistance "
                "is taken into account within 2 business days; phone or video advice within 3 "
                "business days, by appointment, 45 minutes per ticket. An intervention that may "
                "exceed two tickets needs your confirmation by e-mail first. The full terms: "
                "{url}"
            ),
            {"url": ctx.services.config.service.terms_url},
        )
    )
