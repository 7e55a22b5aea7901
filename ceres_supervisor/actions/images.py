"""The preflight of images: has this machine's Docker Engine every image its nodes need, as the file
says? (Before an upgrade stops anything, every agent checks its own Docker and publishes
the result; with `supervisor.pull = "missing"` it pulls what it lacks.)

One task (`images`), woken when the file's images change; while something is missing it checks
again every RECHECK_S (the operator may `docker load` it meanwhile). It never touches a container.
The loop reads `current` (no I/O): the agent publishes it, the planner's budget and the upgrade
operation wait on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

import structlog

from ceres_supervisor.adapters.engine import Engine, EngineError
from ceres_supervisor.decisions.upgrades import Preflight

log = structlog.get_logger(__name__)

RECHECK_S: Final = 5.0
"""How often a missing image is looked for again."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ImageCheck:
    def __init__(self, engine: Engine, on_change: Callable[[], None]) -> None:
        self.engine = engine
        self.on_change = on_change
        self.current: Preflight | None = None
        """The last check of the wanted file (None until it is done)."""
        self._wanted: tuple[str, tuple[str, ...], bool] = ("", (), False)
        self._wake = asyncio.Event()

    def want(self, spec_hash: str, images: Sequence[str], pull: bool) -> None:
        """The file in force (each cycle; no I/O): checked again at once when its images change."""
        wanted = (spec_hash, tuple(sorted(set(images))), pull)
        if wanted != self._wanted:
            if self.current is not None and self.current.images == wanted[1]:
                self.current = replace(self.current, spec_hash=spec_hash)  # the same images: it holds
            else:
                self.current = None  # another file's answer says nothing of these images
            self._wanted = wanted
            self._wake.set()

    async def check_once(self) -> Preflight:
        """Look for every wanted image (pulling a missing one when asked); sets `current`."""
        spec_hash, images, pull = self._wanted
        missing: list[str] = []
        errors: dict[str, str] = {}
        for image in images:
            try:
                present = await self.engine.image_exists(image)
                if not present and pull:
                    log.info("image_pulling", image=image)
                    await self.engine.pull(image)
                    present = await self.engine.image_exists(image)
                    log.info("image_pulled", image=image, present=present)
            except EngineError as err:
                present, errors[image] = False, f"{'pull' if pull else 'check'} failed: {err}"
            if not present:
                missing.append(image)
        check = Preflight(spec_hash, images, tuple(missing), errors, _now())
        if (spec_hash, images, pull) == self._wanted:  # not replaced by a reload meanwhile
            changed = self.current is None or (self.current.missing, self.current.spec_hash) != (
                check.missing,
                check.spec_hash,
            )
            self.current = check
            if missing and changed:
                log.warning("images_missing", images=missing, errors=errors or None)
            if changed:
                self.on_change()
        return check

    async def run(self) -> None:
        """For ever: check when woken, and every RECHECK_S while something is missing."""
        while True:
            self._wake.clear()
            if self._wanted[1]:
                try:
                    await self.check_once()
                except Exception:  # a bug here must not take the daemon down
                    log.exception("image_check_failed")
            missing = self.current is None or not self.current.ok
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECHECK_S if missing else None):
                    await self._wake.wait()
