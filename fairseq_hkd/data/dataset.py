"""CifAsrDataset: manifest utterances -> normalised fbank + target ids; the collater builds the
sample dict of docs/DESIGN.md ("Sample dict")."""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils

from fairseq_hkd.compat import batch_by_size_keep_remainder
from fairseq_hkd.data.audio import SAMPLE_RATE, file_sample_rate, read_audio, resampled_length, wrong_rate_error
from fairseq_hkd.data.fbank import fbank, num_frames
from fairseq_hkd.data.feature_store import FeatureStore
from fairseq_hkd.data.manifest import ManifestEntry, ManifestError
from fairseq_hkd.data.units import Units
from fairseq_hkd.errors import UserError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- targets
def encode_targets(
    entries: Sequence[ManifestEntry], units: Units, tgt_dict: Dictionary, max_unk_ratio: float = 0.0
) -> List[torch.LongTensor]:
    """Transcripts -> token ids ending with ``</s>``.

    Unknown symbols are counted over the split; above ``max_unk_ratio`` (share of all symbols) a
    ``ManifestError`` lists the first offending lines; otherwise they map to ``<unk>`` and the count is
    logged. A transcript with no units at all is an error naming its line.
    """
    targets, n_sym, n_unk, bad = [], 0, 0, []
    for e in entries:
        symbols = units.encode(e.tgt_text)
        if not symbols:
            raise ManifestError(f"{e.where}: transcript {e.tgt_text!r} of {e.id!r} has no {units.unit} units")
        ids = [tgt_dict.index(s) for s in symbols] + [tgt_dict.eos()]
        unk = [s for s, i in zip(symbols, ids) if i == tgt_dict.unk()]
        if unk:
            n_unk += len(unk)
            bad.append((e.where, unk))
        n_sym += len(symbols)
        targets.append(torch.LongTensor(ids))
    if n_unk:
        ratio = n_unk / n_sym
        examples = "; ".join(f"{w}: {sorted(set(u))[:5]}" for w, u in bad[:5])
        msg = (f"{n_unk} of {n_sym} target symbols ({100 * ratio:.2f}%) are not in the dictionary "
               f"({len(bad)} utterances), e.g. {examples}")
        if ratio > max_unk_ratio:
            raise ManifestError(
                f"{msg}. This exceeds --max-unk-ratio {max_unk_ratio}: rebuild dict.txt with "
                "fairseq-hkd-build-dict for these units, or raise --max-unk-ratio to map them to <unk>"
            )
        logger.warning(f"{msg}; mapped to <unk> (--max-unk-ratio {max_unk_ratio})")
    return targets


# ---------------------------------------------------------------------------------------------- features
class AudioFeatures:
    """Raw log-mel computed on the fly from the audio file."""

    def __init__(self, strict_sample_rate: bool = False, multichannel: str = "downmix"):
        self.strict_sample_rate = strict_sample_rate
        self.multichannel = multichannel

    def frames(self, entry: ManifestEntry) -> int:
        """fbank frames of the utterance once resampled to 16 kHz (``n_samples`` counts the file's own
        samples): from the manifest's ``sample_rate``, else from the file's header (no samples read).
        A file not at 16 kHz under ``--strict-sample-rate`` is an error here, before training starts."""
        rate = entry.sample_rate if entry.sample_rate is not None else file_sample_rate(entry.audio, entry.where)
        if rate != SAMPLE_RATE and self.strict_sample_rate:
            raise wrong_rate_error(entry.audio, entry.where, rate)
        return num_frames(resampled_length(entry.n_samples, rate))

    def waveform(self, entry: ManifestEntry) -> np.ndarray:
        """The utterance's 16 kHz mono samples (float32)."""
        return read_audio(entry.audio, entry.where, entry.n_samples, strict_sample_rate=self.strict_sample_rate,
                          multichannel=self.multichannel, expected_rate=entry.sample_rate)

    def __call__(self, entry: ManifestEntry) -> np.ndarray:
        return fbank(self.waveform(entry))


class StoredFeatures:
    """Raw log-mel read from a precomputed feature store."""

    def __init__(self, store: FeatureStore):
        self.store = store

    def frames(self, entry: ManifestEntry) -> int:
        try:
            return self.store.frames(entry.id)
        except KeyError:
            raise ManifestError(f"{entry.where}: utterance {entry.id!r} is not in the feature store; rebuild it "
                                "with fairseq-hkd-feature-store") from None

    def __call__(self, entry: ManifestEntry) -> np.ndarray:
        return self.store.get(entry.id)


# ---------------------------------------------------------------------------------------------- dataset
class CifAsrDataset(FairseqDataset):
    """One split of a manifest.

    Item i: ``{"id": i, "source": FloatTensor [T, 80] (normalised, never augmented: SpecAugment is applied
    to training batches by the task), "target": LongTensor [S] (ends with </s>),
    "teacher": FloatTensor [S, D] | None}``.

    ``batch_extra_frames``: frames the task may add to every utterance of a batch after collating
    (edge silence); batching by ``--max-tokens`` counts them, so that a batch still holds at most
    max_tokens padded frames when it reaches the model. ``batch_frame_scale``: the factor by which the
    task may lengthen an utterance (tempo perturbation slowed down); batching counts
    ``ceil(frames * batch_frame_scale) + batch_extra_frames``.
    """

    def __init__(
        self,
        split: str,
        entries: Sequence[ManifestEntry],
        targets: Sequence[torch.LongTensor],
        tgt_dict: Dictionary,
        features: Callable[[ManifestEntry], np.ndarray],
        cmvn: Callable[[np.ndarray], np.ndarray],
        teacher_store=None,
        shuffle: bool = True,
    ):
        assert len(entries) == len(targets)
        self.split = split
        self.entries = list(entries)
        self.targets = list(targets)
        self.tgt_dict = tgt_dict
        self.features = features
        self.cmvn = cmvn
        self.teacher_store = teacher_store
        self.shuffle = shuffle
        self.epoch = 1
        self.src_sizes = np.array([features.frames(e) for e in self.entries], dtype=np.int64)
        self.tgt_sizes = np.array([len(t) for t in self.targets], dtype=np.int64)
        self.batch_extra_frames = 0
        self.batch_frame_scale = 1.0

    # sizes --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def sizes(self) -> np.ndarray:
        return self.src_sizes

    def num_tokens(self, index: int) -> int:
        """Frames the utterance takes in a batch (with ``batch_extra_frames``)."""
        return int(self.num_tokens_vec(np.array([index]))[0])

    def num_tokens_vec(self, indices: np.ndarray) -> np.ndarray:
        sizes = self.src_sizes[indices]
        if self.batch_frame_scale != 1.0:
            sizes = np.ceil(sizes * self.batch_frame_scale).astype(np.int64)
        return sizes + self.batch_extra_frames

    def size(self, index: int):
        return int(self.src_sizes[index]), int(self.tgt_sizes[index])

    def ordered_indices(self) -> np.ndarray:
        order = [np.random.permutation(len(self))] if self.shuffle else [np.arange(len(self))]
        order.append(self.src_sizes)
        return np.lexsort(order)[::-1]

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        """fairseq's batching by frames (``max_tokens``), keeping the last batch (see compat.py)."""
        batches = super().batch_by_size(indices, max_tokens, max_sentences, required_batch_size_multiple)
        return batch_by_size_keep_remainder(batches, indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.features, "set_epoch"):  # time_shift.py draws per epoch
            self.features.set_epoch(epoch)

    @property
    def supports_prefetch(self) -> bool:
        return False

    def utt_ids(self) -> List[str]:
        return [e.id for e in self.entries]

    # items --------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> Dict:
        entry = self.entries[index]
        # np.require copies when needed: a feature store read with --cmvn none is a read-only memmap view
        feats = np.require(self.cmvn(self.features(entry)), np.float32, ["C_CONTIGUOUS", "WRITEABLE"])
        teacher = None
        if self.teacher_store is not None:
            # the store returns a read-only memmap view: copy it into a writable array once per item
            teacher = torch.from_numpy(np.array(self.teacher_store.get(entry.id), dtype=np.float32))
        return {"id": index, "source": torch.from_numpy(feats), "target": self.targets[index], "teacher": teacher}

    def collater(self, samples: List[Dict]) -> Dict:
        """Items -> the sample dict of docs/DESIGN.md; {} for an empty list."""
        if len(samples) == 0:
            return {}
        pad, eos = self.tgt_dict.pad(), self.tgt_dict.eos()
        src_lengths = torch.LongTensor([s["source"].size(0) for s in samples])
        B, T, F = len(samples), int(src_lengths.max()), samples[0]["source"].size(1)
        src = samples[0]["source"].new_zeros(B, T, F)
        for b, s in enumerate(samples):
            src[b, : s["source"].size(0)] = s["source"]
        targets = [s["target"] for s in samples]
        target = data_utils.collate_tokens(targets, pad, eos, left_pad=False)
        prev = data_utils.collate_tokens(targets, pad, eos, left_pad=False, move_eos_to_beginning=True)
        target_lengths = torch.LongTensor([t.numel() for t in targets])
        sample = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "utt_id": [self.entries[s["id"]].id for s in samples],
            "net_input": {"src_tokens": src, "src_lengths": src_lengths, "prev_output_tokens": prev},
            "target": target,
            "target_lengths": target_lengths,
            "ntokens": int(target_lengths.sum()),
            "nsentences": B,
        }
        if samples[0]["teacher"] is not None:
            D = samples[0]["teacher"].size(1)
            teacher = torch.zeros(B, target.size(1), D, dtype=torch.float32)
            for b, s in enumerate(samples):
                t = s["teacher"]
                if t.size(0) != target_lengths[b]:
                    raise UserError(
                        f"teacher states of {sample['utt_id'][b]!r} have {t.size(0)} positions, target has "
                        f"{int(target_lengths[b])}; rebuild the teacher store with fairseq-hkd-extract-teacher"
                    )
                teacher[b, : t.size(0)] = t
            sample["teacher_states"] = teacher
        return sample
