"""Progress bar and end-of-run summary of a transcription job (torch-free; tqdm).

The bar counts seconds of audio decoded against the total the file headers announce (read once,
without the samples), so a single 60-minute file moves it too; its postfix shows files done and
failed. The summary: files transcribed, hours of audio, wall time, real-time factor, failures.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Optional, Sequence

from fairseq_hkd.generation.inputs import AudioItem

__all__ = ["Progress", "header_seconds"]


def header_seconds(path: str) -> float:
    """Duration from the file header (0 when it cannot be read: the error comes when decoding)."""
    import soundfile as sf

    try:
        info = sf.info(path)
        return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - any unreadable header: the pipeline reports it per file
        return 0.0


class Progress:
    """Pass :meth:`update` as the pipeline's ``progress``; :meth:`done` for each result."""

    def __init__(self, items: Sequence[AudioItem], enabled: bool = True):
        self.n_items = len(items)
        self.files = self.failed = 0
        self.audio_s = 0.0  # seconds of the files transcribed
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            total = sum(header_seconds(it.audio) for it in items)
            self.bar = tqdm(total=round(total, 1), unit="s", unit_scale=True, desc="audio", file=sys.stderr,
                            dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
            self._postfix()

    def update(self, seconds: float) -> None:
        if self.bar is not None and seconds:
            self.bar.update(min(seconds, max(self.bar.total - self.bar.n, 0)))

    def done(self, ok: bool, duration: float = 0.0) -> None:
        """One file finished (``ok``) or failed."""
        self.files += 1
        self.failed += int(not ok)
        self.audio_s += duration if ok else 0.0
        self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"files {self.files}/{self.n_items}, failed {self.failed}", refresh=True)

    @contextlib.contextmanager
    def paused(self):
        """Write a log line without breaking the bar: ``with progress.paused(): logger.error(...)``."""
        if self.bar is None:
            yield
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            yield

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def summary(self, elapsed: Optional[float] = None) -> str:
        """Files transcribed, hours of audio, wall time and real-time factor (:meth:`failures` apart)."""
        elapsed = self.elapsed if elapsed is None else elapsed
        ok = self.files - self.failed
        s = (f"transcribed {ok} files ({self.audio_s:.1f} s = {self.audio_s / 3600:.3f} h of audio) in "
             f"{elapsed:.1f} s, real-time factor {elapsed / max(self.audio_s, 1e-9):.3f}")
        return s

    def failures(self) -> str:
        return f"{self.failed} of {self.files} files failed" if self.failed else "no file failed"
