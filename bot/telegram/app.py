"""The Telegram adapter: one python-telegram-bot Application, started and stopped by hand.

Other adapters share the asyncio loop, so there is no ``run_polling``: :meth:`start` runs
``initialize → setMyCommands → start → polling or webhook → delivery loop`` and :meth:`stop`
undoes it in reverse. Requests go through the AIORateLimiter (Telegram's flood limits, with
retries on 429), and the bot token is kept out of the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from urllib.parse import urlsplit

from telegram import Update
from telegram.ext import AIORateLimiter, Application, BaseRateLimiter

from bot.core.app import Core
from bot.core.delivery import Deliverer
from bot.telegram import keyboards
from bot.telegram.handlers import PLATFORM, Handlers, menu
from bot.telegram.redact import RedactToken
from bot.telegram.replies import Sender
from storage.config import ConfigError, Settings, TelegramSettings

log = logging.getLogger(__name__)

ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
CONCURRENT_UPDATES = 16
RATE_LIMIT_RETRIES = 3
PROGRESS_INTERVAL = 3.0


def file_url_of(base_url: str) -> str:
    """The file download URL of a Bot API server given as ``…/bot``."""
    if not base_url.endswith("/bot"):
        raise ConfigError(f"telegram.base_url must end with /bot (got {base_url!r})")
    return base_url.removesuffix("bot") + "file/bot"


def build_application(
    tg: TelegramSettings,
    rate_limiter: BaseRateLimiter | None,  # type: ignore[type-arg]
) -> Application:  # type: ignore[type-arg]
    """The Application for these settings (no persistence: the database is the state)."""
    if tg.token is None:
        raise ConfigError("telegram.token is not set (get one from @BotFather)")
    builder = Application.builder().token(tg.token.get_secret_value())
    builder = builder.concurrent_updates(CONCURRENT_UPDATES)
    if rate_limiter is not None:
        builder = builder.rate_limiter(rate_limiter)
    if tg.base_url:
        builder = builder.base_url(tg.base_url).base_file_url(file_url_of(tg.base_url))
    return builder.build()


class TelegramAdapter:
    """Telegram commands, buttons and result delivery over one :class:`Core`."""

    def __init__(
        self,
        settings: Settings,
        core: Core,
        *,
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.settings = settings.telegram
        if self.settings.mode == "webhook" and not self.settings.webhook_url:
            raise ConfigError("telegram.webhook_url is required in webhook mode")
        if self.settings.token is None:
            raise ConfigError("telegram.token is not set (get one from @BotFather)")
        token = self.settings.token.get_secret_value()
        self._redact = RedactToken(token)
        self._redact.install()  # before the Bot exists: it logs its URLs
        limiter = AIORateLimiter(max_retries=RATE_LIMIT_RETRIES)
        self.application = build_application(self.settings, limiter)
        self.sender = Sender(
            self.application.bot,
            keyboards.signing_key(token),
            lambda job_id, extra: core.remember_receipt(job_id, extra=extra),
        )
        self.handlers = Handlers(core, self.sender, settings)
        self.handlers.register(self.application)
        self.deliverer = Deliverer(
            core.db,
            PLATFORM,
            self.sender.deliver,
            progress=self.sender.progress,
            poll_seconds=settings.queue.poll_seconds,
            progress_interval=progress_interval,
        )
        self._delivery: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, publish the command menu, receive updates, deliver results."""
        self._redact.install()  # handlers set up since the adapter was built
        app = self.application
        try:
            await app.initialize()
            await app.bot.set_my_commands(menu())
            await app.start()
            await self._receive()
        except BaseException:
            await self.stop()
            raise
        self._delivery = asyncio.create_task(self.deliverer.run(), name="telegram-delivery")
        log.info("telegram: @%s is up (%s)", app.bot.username, self.settings.mode)

    async def _receive(self) -> None:
        updater = self.application.updater
        assert updater is not None
        if self.settings.mode == "polling":
            await updater.start_polling(allowed_updates=ALLOWED_UPDATES)
            return
        url = self.settings.webhook_url or ""
        secret = self.settings.webhook_secret
        await updater.start_webhook(
            listen=self.settings.webhook_listen,
            port=self.settings.webhook_port,
            url_path=urlsplit(url).path.strip("/"),
            webhook_url=url,
            allowed_updates=ALLOWED_UPDATES,
            secret_token=secret.get_secret_value() if secret else secrets.token_urlsafe(32),
        )

    async def stop(self) -> None:
        """Stop delivering and receiving, then shut the Application down."""
        self.deliverer.stop()
        if self._delivery is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery
            self._delivery = None
        app = self.application
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()
        self._redact.uninstall()
        log.info("telegram: stopped")


async def start_telegram(settings: Settings, core: Core) -> TelegramAdapter:
    """Build and start the Telegram adapter; ``await adapter.stop()`` ends it."""
    adapter = TelegramAdapter(settings, core)
    await adapter.start()
    return adapter
