"""The ``cif_asr`` task: speech recognition from a manifest data directory.

Data directory::

    train.tsv valid.tsv ...     manifests (id, audio, n_samples, tgt_text[, speaker]), see data/manifest.py
    dict.txt                    unit dictionary (<s>=0 is also the CTC blank, <pad>=1, </s>=2, <unk>=3)
    cmvn.npz                    global CMVN stats (optional; fairseq-hkd-cmvn)
    {split}.fbank.*             precomputed features (optional; fairseq-hkd-feature-store)
    {split}.teacher.*           teacher store (optional; fairseq-hkd-extract-teacher)

Usage::

    fairseq-train data/synth --user-dir fairseq_hkd --task cif_asr --unit char \\
        --arch cif_tiny --criterion cif --max-tokens 20000 ...
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np
import torch
from fairseq.data import Dictionary
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from fairseq_hkd.compat import cpu_has_native_bf16
from fairseq_hkd.data.dataset import AudioFeatures, CifAsrDataset, StoredFeatures, encode_targets
from fairseq_hkd.data.cmvn import CMVN_TYPES, build_cmvn
from fairseq_hkd.data.level import LevelMatched, resolve_target
from fairseq_hkd.data.edge_silence import MAX_FRAMES as EDGE_SILENCE_MAX_FRAMES
from fairseq_hkd.data.edge_silence import EdgeSilenceConfig, pad_edges_batch, silence_bank
from fairseq_hkd.data.sentence_joins import JoinConfig, join_batch
from fairseq_hkd.data.tempo import TempoConfig, tempo_batch
from fairseq_hkd.data.vtlp import VtlpConfig, vtlp_batch
from fairseq_hkd.data.noise import NoiseConfig, add_noise_batch, bank_power, noise_bank, noise_recordings
from fairseq_hkd.data.time_shift import TimeShiftedFeatures
from fairseq_hkd.data.feature_store import FeatureStore
from fairseq_hkd.data.manifest import read_manifest
from fairseq_hkd.data.specaugment import SpecAugmentConfig, spec_augment_batch
from fairseq_hkd.data.units import UNIT_TYPES, Units, UnitsDecoder
from fairseq_hkd.errors import UserError, UserFileNotFoundError

logger = logging.getLogger(__name__)

AUTO_YES_NO = ChoiceEnum(["auto", "yes", "no"])


@dataclass
class CifAsrConfig(FairseqDataclass):
    data: str = field(default="", metadata={"help": "data directory with {split}.tsv manifests and dict.txt"})
    # units ------------------------------------------------------------------------------------
    unit: ChoiceEnum(UNIT_TYPES) = field(
        default="char", metadata={"help": "ASR units: characters, PLM WordPiece tokens, whole words (PLM-normalised), or sentencepiece pieces"}
    )
    tokenizer_dir: Optional[str] = field(
        default=None, metadata={"help": "local PLM tokenizer directory (--unit wordpiece or word)"}
    )
    spm_model: Optional[str] = field(default=None, metadata={"help": "sentencepiece .model file (--unit spm)"})
    lowercase: bool = field(default=False, metadata={"help": "lowercase transcripts (--unit char/spm)"})
    dict_path: Optional[str] = field(default=None, metadata={"help": "unit dictionary (default: DATA/dict.txt)"})
    max_unk_ratio: float = field(
        default=0.0,
        metadata={"help": "largest share of target symbols not in the dictionary (mapped to <unk>, counted); "
                          "above it loading fails and names the lines"},
    )
    # audio / features ---------------------------------------------------------------------------
    strict_sample_rate: bool = field(
        default=False, metadata={"help": "reject audio not sampled at 16 kHz instead of resampling it (counted)"}
    )
    multichannel: ChoiceEnum(["downmix", "error"]) = field(
        default="downmix", metadata={"help": "multi-channel audio: average the channels (counted) or fail"}
    )
    feature_store: AUTO_YES_NO = field(
        default="auto",
        metadata={"help": "read precomputed fbank from {split}.fbank.* (auto: when present; yes: required)"},
    )
    cmvn: ChoiceEnum(CMVN_TYPES) = field(
        default="utterance", metadata={"help": "feature normalisation: global stats, per utterance, or none"}
    )
    cmvn_stats: Optional[str] = field(
        default=None, metadata={"help": "global CMVN stats (default: DATA/cmvn.npz; fairseq-hkd-cmvn writes it)"}
    )
    input_level: str = field(
        default="off",
        metadata={"help": "match every utterance's speech level before CMVN (data/level.py): off, auto (the "
                          "level of the global CMVN mean) or a level in nats; decoding matches levels by default "
                          "(fairseq-hkd-transcribe --input-level auto), training and fairseq-generate only with this"},
    )
    # SpecAugment (training updates only) -------------------------------------------------------
    spec_aug_freq_masks: int = field(default=2, metadata={"help": "SpecAugment: frequency masks"})
    spec_aug_freq_width: int = field(default=27, metadata={"help": "SpecAugment: max frequency mask width (F)"})
    spec_aug_time_masks: int = field(default=2, metadata={"help": "SpecAugment: time masks"})
    spec_aug_time_width: int = field(default=50, metadata={"help": "SpecAugment: max time mask width (T)"})
    spec_aug_adaptive_time_ratio: float = field(
        default=0.0, metadata={"help": "SpecAugment: if > 0, cap time mask width at this share of the utterance"}
    )
    spec_aug_prob: float = field(default=1.0, metadata={"help": "SpecAugment: probability per utterance (0 = off)"})
    # edge silence (training updates only; data/edge_silence.py) --------------------------------
    edge_silence_max_start_ms: int = field(
        default=0, metadata={"help": "edge-silence augmentation: at most this much silence before a training "
                                     "utterance (0 = off; needs --cmvn global or none)"}
    )
    edge_silence_max_end_ms: int = field(
        default=0, metadata={"help": "edge-silence augmentation: at most this much silence after a training utterance"}
    )
    edge_silence_prob: float = field(
        default=0.5, metadata={"help": "edge-silence augmentation: probability per utterance"}
    )
    # sentence joins (training updates only; data/sentence_joins.py) ------------------------------
    join_prob: float = field(
        default=0.0,
        metadata={"help": "sentence joins: probability per training batch that its rows are joined in pairs "
                          "(utterance, pause, utterance; targets a </s> b </s>), so that the model transcribes "
                          "segments holding two sentences; its decoding then lets </s> compete at inner steps "
                          "(--cif-inner-eos). 0 = off; needs --cmvn global or none"},
    )
    join_min_gap_ms: int = field(default=100, metadata={"help": "sentence joins: shortest pause between the two"})
    join_max_gap_ms: int = field(default=600, metadata={"help": "sentence joins: longest pause between the two"})
    # tempo perturbation (training updates only; data/tempo.py) ---------------------------------
    tempo_min: float = field(
        default=1.0, metadata={"help": "tempo perturbation: each training utterance is played U(min, max) times "
                                       "as fast, on its fbank frames (1 1 = off; e.g. 0.9 1.1)"}
    )
    tempo_max: float = field(default=1.0, metadata={"help": "tempo perturbation: the largest factor (> 1 = faster)"})
    tempo_prob: float = field(default=1.0, metadata={"help": "tempo perturbation: probability per utterance"})
    # vocal tract length perturbation (training updates only; data/vtlp.py) -----------------------
    vtlp_min: float = field(
        default=1.0, metadata={"help": "VTLP: each training utterance's frequency axis is warped by a factor "
                                       "U(min, max) (formants move by it; 1 1 = off, e.g. 0.9 1.1; needs --cmvn "
                                       "global or none)"}
    )
    vtlp_max: float = field(default=1.0, metadata={"help": "VTLP: the largest factor (> 1 = a shorter vocal tract)"})
    vtlp_prob: float = field(default=1.0, metadata={"help": "VTLP: probability per utterance"})
    # additive noise (training updates only; data/noise.py) --------------------------------------
    noise_prob: float = field(
        default=0.0, metadata={"help": "noise augmentation: probability that a training utterance is heard through "
                                       "white, pink or brown noise, or one of the --noise-dir recordings (0 = off; "
                                       "needs --cmvn global or none)"}
    )
    noise_snr_min: float = field(default=5.0, metadata={"help": "noise augmentation: the lowest SNR (dB, of mel energies)"})
    noise_snr_max: float = field(default=20.0, metadata={"help": "noise augmentation: the highest SNR (dB)"})
    noise_dir: Optional[str] = field(
        default=None, metadata={"help": "noise augmentation: a folder of noise recordings (any format and rate "
                                        "libsndfile reads; e.g. MUSAN's noise/) heard instead of the synthetic "
                                        "colours, one per noisy utterance (data/noise.py)"}
    )
    noise_max_seconds: float = field(
        default=60.0, metadata={"help": "noise augmentation: the first N seconds of each --noise-dir recording "
                                        "are used (the bank is held in memory: 60 s of fbank frames = 1.9 MB)"}
    )
    # time shift (training split only; data/time_shift.py) ---------------------------------------
    time_shift_max_ms: float = field(
        default=0.0, metadata={"help": "time-shift augmentation: drop U{0..N} ms at the start of each training "
                                       "utterance's waveform (0 = off; 10 covers every frame phase; needs "
                                       "--feature-store no)"}
    )
    # length filtering ---------------------------------------------------------------------------
    max_source_frames: int = field(
        default=3000, metadata={"help": "longest utterance in feature frames (10 ms); longer ones are filtered"}
    )
    min_source_frames: int = field(
        default=8, metadata={"help": "shortest utterance in feature frames; shorter ones are filtered"}
    )
    max_target_length: int = field(default=1024, metadata={"help": "longest target in units (incl. </s>)"})
    # teacher ------------------------------------------------------------------------------------
    load_teacher: AUTO_YES_NO = field(
        default="auto",
        metadata={"help": "load the split's teacher store (auto: when present; yes: error when missing)"},
    )
    teacher_dir: Optional[str] = field(
        default=None, metadata={"help": "directory of {split}.teacher.* stores (default: DATA)"}
    )
    # decoding ------------------------------------------------------------------------------------
    cif_eos_slack: int = field(
        default=0,
        metadata={"help": "decoding: </s> may end a hypothesis only at its last CIF step (0) or also one step "
                          "before it (1, absorbs a spurious tail fire). The CIF tail threshold is the model's: "
                          "--model-overrides \"{'cif_tail_threshold': 0.4}\""},
    )
    cif_count_search: int = field(
        default=1,
        metadata={"help": "decoding: the CIF count proposes counts L-R..L+R, each decoded with the weights scaled "
                          "to it (as in training); the best by --cif-ctc-weight wins. 0: scaled to L only; -1: the "
                          "raw weights (decoding before 2026-12-03)"},
    )
    cif_ctc_weight: float = field(
        default=0.7,
        metadata={"help": "decoding with --cif-count-search >= 1: a candidate count scores W * CTC log-likelihood "
                          "+ (1 - W) * decoder log-prob of its best hypothesis (a model trained without the CTC "
                          "loss decodes with 0: its checkpoint records the criterion's CTC weight)"},
    )
    cif_inner_eos: AUTO_YES_NO = field(
        default="auto",
        metadata={"help": "decoding: </s> may also be chosen at inner steps, as a sentence boundary dropped from "
                          "the text (a segment holding two sentences). auto: yes for a model trained with "
                          "--join-prob > 0 (its checkpoint records it), no otherwise"},
    )
    # speed ---------------------------------------------------------------------------------------
    autocast_bf16: AUTO_YES_NO = field(
        default="no",
        metadata={"help": "training updates under bf16 autocast: matrix products and convolutions in "
                          "bf16; CIF weights and integration, the distillation projections, losses and "
                          "softmaxes in float32; parameters, gradients and Adam stay float32, no loss "
                          "scaling. yes: on CPU and on GPU (fairseq 0.12's own --bf16 is for TPUs); auto: "
                          "on a CPU that computes bf16 natively (AVX512-BF16 or AMX), off on GPU"},
    )
    # from other config groups ---------------------------------------------------------------------
    train_subset: str = II("dataset.train_subset")
    seed: int = II("common.seed")


MODEL_FIRST = ("build the model before the criterion: task.build_model(cfg.model), then "
               "task.build_criterion(cfg.criterion), the order fairseq-train and fairseq-validate use")


@dataclass(frozen=True)
class StudentDims:
    """Widths of the student states that a distillation criterion projects to the teacher width,
    recorded by :meth:`CifAsrTask.build_model` as ``task.student_dims``."""

    cif: int      # C: the CIF embeddings c_i (the encoder width), cif_hkd's ACD input
    decoder: int  # C': the decoder's pre-final states s_i, cif_hkd's LRD input

    def __post_init__(self):
        for name in ("cif", "decoder"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"StudentDims.{name} must be a positive int, got {value!r}")

    @classmethod
    def of(cls, task, criterion: str) -> "StudentDims":
        """``task.student_dims`` for ``criterion`` (its name, for the message). A mapping
        ``{"cif": C, "decoder": C'}`` (stand-in tasks in tests and benchmarks) is accepted; unset
        (None or missing) means the criterion is being built before the model: a ValueError saying so."""
        dims = getattr(task, "student_dims", None)
        if dims is None:
            raise ValueError(f"criterion {criterion} needs the student model's widths (task.student_dims is unset): "
                             + MODEL_FIRST)
        if isinstance(dims, StudentDims):
            return dims
        if isinstance(dims, Mapping) and set(dims) == {"cif", "decoder"}:
            return cls(int(dims["cif"]), int(dims["decoder"]))
        raise TypeError(f"task.student_dims must be a StudentDims, got {dims!r}")


@register_task("cif_asr", dataclass=CifAsrConfig)
class CifAsrTask(FairseqTask):
    """Speech recognition on a manifest data directory (see the module docstring).

    Contract with the criterions (``cif``, ``cif_hkd``; docs/DESIGN.md, "Task <-> criterion"),
    established in fairseq's build order, model first:

    1. :meth:`build_model` records ``student_dims`` (:class:`StudentDims`, the cif_hkd projections'
       input widths) and ``encoder_output_lengths`` (the model's frames -> encoder frames map);
    2. :meth:`build_criterion` requires step 1 (a ValueError naming the order otherwise) and sets
       ``teacher_forced``: from then on :meth:`filter_indices_by_size` also drops utterances whose
       target is longer than the encoder output, whose teacher-forced losses cannot be computed;
    3. the criterion reads ``target_dictionary``, and cif_hkd ``teacher_dim`` (the width D of the
       training split's teacher states, None without a store; known before any split is loaded)
       and ``StudentDims.of(task, ...)``.
    """

    cfg: CifAsrConfig

    def __init__(self, cfg: CifAsrConfig, tgt_dict: Dictionary, units: Units):
        super().__init__(cfg)
        self.tgt_dict = tgt_dict
        self.units = units
        self._teacher_dim: Optional[int] = None
        self._teacher_identity: Optional[dict] = None
        # the contract with the criterions (class docstring)
        self.model_built = False  # set by build_model
        self.student_dims: Optional[StudentDims] = None  # set by build_model
        self.encoder_output_lengths: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # set by build_model
        self.teacher_forced = False  # set by build_criterion: losses need S <= encoder frames
        self._use_bf16: Optional[bool] = None  # decided at the first training step (--autocast-bf16)
        # the CTC loss weight the model was trained with (build_criterion; saved in checkpoints as the task
        # state, or read from an older checkpoint's criterion config): 0 = an untrained CTC head
        self.trained_ctc_weight: Optional[float] = None
        # the --join-prob the model was trained with (build_criterion; task state): > 0 = inner </s> decoding
        self.trained_join_prob: Optional[float] = None
        specaug = SpecAugmentConfig(
            cfg.spec_aug_freq_masks, cfg.spec_aug_freq_width, cfg.spec_aug_time_masks, cfg.spec_aug_time_width,
            cfg.spec_aug_adaptive_time_ratio, cfg.spec_aug_prob,
        )
        self.specaugment: Optional[SpecAugmentConfig] = specaug if specaug.enabled() else None
        edge = EdgeSilenceConfig(cfg.edge_silence_max_start_ms // 10, cfg.edge_silence_max_end_ms // 10,
                                 cfg.edge_silence_prob)
        self.edge_silence: Optional[EdgeSilenceConfig] = edge if edge.enabled() else None
        if self.edge_silence is not None and cfg.cmvn == "utterance":
            raise UserError("--edge-silence-max-{start,end}-ms need frame-wise normalisation: use --cmvn global "
                            "(fairseq-hkd-cmvn writes DATA/cmvn.npz) or --cmvn none")
        if self.edge_silence is not None and max(edge.max_start, edge.max_end) > EDGE_SILENCE_MAX_FRAMES:
            raise UserError(f"--edge-silence-max-{{start,end}}-ms: at most {EDGE_SILENCE_MAX_FRAMES * 10} ms")
        self._silence_bank: Optional[np.ndarray] = None  # built at the first padded or joined batch
        self.joins = JoinConfig(cfg.join_prob, cfg.join_min_gap_ms // 10, cfg.join_max_gap_ms // 10)
        self.joins.check(EDGE_SILENCE_MAX_FRAMES)
        if self.joins.enabled() and cfg.cmvn == "utterance":
            raise UserError("--join-prob needs frame-wise normalisation: use --cmvn global or --cmvn none")
        tempo = TempoConfig(cfg.tempo_min, cfg.tempo_max, cfg.tempo_prob)
        tempo.check()
        self.tempo: Optional[TempoConfig] = tempo if tempo.enabled() else None
        vtlp = VtlpConfig(cfg.vtlp_min, cfg.vtlp_max, cfg.vtlp_prob)
        vtlp.check()
        self.vtlp: Optional[VtlpConfig] = vtlp if vtlp.enabled() else None
        if self.vtlp is not None and cfg.cmvn == "utterance":
            raise UserError("--vtlp-min/--vtlp-max need frame-wise normalisation: use --cmvn global or --cmvn none")
        self._raw_cmvn = None  # (CMVN mean, CMVN std) that VTLP and noise undo and redo (raw_cmvn)
        noise = NoiseConfig(cfg.noise_prob, cfg.noise_snr_min, cfg.noise_snr_max)
        noise.check()
        self.noise: Optional[NoiseConfig] = noise if noise.enabled() else None
        if self.noise is not None and cfg.cmvn == "utterance":
            raise UserError("--noise-prob needs frame-wise normalisation: use --cmvn global or --cmvn none")
        if cfg.noise_dir and self.noise is None:
            raise UserError(f"--noise-dir {cfg.noise_dir} is set but --noise-prob is 0: give the probability that "
                            "a training utterance is heard through noise (e.g. --noise-prob 0.3)")
        self._noise_bank = None  # (bank, its power, CMVN mean, CMVN std), built at the first noisy batch
        if cfg.time_shift_max_ms < 0:
            raise UserError(f"--time-shift-max-ms must be >= 0 (0 = off), got {cfg.time_shift_max_ms:g}")
        resolve_target(cfg.input_level, "utterance")  # a bad --input-level fails here, in one line

    @classmethod
    def setup_task(cls, cfg: CifAsrConfig, **kwargs):
        if not cfg.data or not os.path.isdir(cfg.data):
            raise UserFileNotFoundError(f"data directory {cfg.data!r} not found (first positional argument of fairseq-train)")
        dict_path = cfg.dict_path or os.path.join(cfg.data, "dict.txt")
        if not os.path.isfile(dict_path):
            raise UserFileNotFoundError(f"dictionary {dict_path} not found: build it with fairseq-hkd-build-dict")
        tgt_dict = Dictionary.load(dict_path)
        assert tgt_dict.bos() == 0 and tgt_dict.pad() == 1 and tgt_dict.eos() == 2 and tgt_dict.unk() == 3
        units = Units(cfg.unit, dict_path=dict_path, tokenizer_dir=cfg.tokenizer_dir, spm_model=cfg.spm_model,
                      lowercase=cfg.lowercase)
        logger.info(f"dictionary {dict_path}: {len(tgt_dict)} types; units {cfg.unit}")
        from fairseq_hkd.generation.lm_fusion import install_lm_dictionary_check  # other component; lazily

        install_lm_dictionary_check()  # fairseq-generate --lm-path: one-line error for an LM of other units
        return cls(cfg, tgt_dict, units)

    # dictionaries / sizes ------------------------------------------------------------------------
    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self) -> Dictionary:
        return self.tgt_dict

    def max_positions(self):
        return self.cfg.max_source_frames, self.cfg.max_target_length

    def is_training_split(self, split: str) -> bool:
        return split in self.cfg.train_subset.split(",")

    # data ----------------------------------------------------------------------------------------
    def raw_cmvn(self):
        """(mean, std) of the global CMVN, or (None, None) for --cmvn none, read once: what the augmentations
        on raw log-mel frames (VTLP, noise) undo and redo around their change."""
        if self._raw_cmvn is None:
            cmvn = self._build_cmvn()
            self._raw_cmvn = getattr(cmvn, "mean", None), getattr(cmvn, "std", None)
        return self._raw_cmvn

    def noise_augmentation_bank(self):
        """(bank, its power, CMVN mean, CMVN std) of the noise augmentation, built once: the recordings of
        --noise-dir, else the synthetic colours (data/noise.py)."""
        if self._noise_bank is None:
            bank = (noise_recordings(self.cfg.noise_dir, self.cfg.noise_max_seconds) if self.cfg.noise_dir
                    else noise_bank())
            self._noise_bank = (bank, bank_power(bank), *self.raw_cmvn())
        return self._noise_bank

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        cfg = self.cfg
        if self.noise is not None and cfg.noise_dir and self.is_training_split(split):
            self.noise_augmentation_bank()  # a bad --noise-dir stops training before the first update, not at it
        manifest = os.path.join(cfg.data, f"{split}.tsv")
        use_store = cfg.feature_store != "no" and FeatureStore.exists(cfg.data, split)
        shift = cfg.time_shift_max_ms > 0 and self.is_training_split(split)
        if shift and use_store:
            raise UserError(f"--time-shift-max-ms needs the waveforms, but {split} would read the feature store "
                            f"{cfg.data}/{split}.fbank.*: add --feature-store no")
        entries = read_manifest(manifest, check_audio_exists=not use_store)  # the store replaces the audio
        targets = encode_targets(entries, self.units, self.tgt_dict, cfg.max_unk_ratio)
        if use_store:
            features = StoredFeatures(FeatureStore(cfg.data, split, manifest))
            logger.info(f"{split}: features from the feature store")
        elif cfg.feature_store == "yes":
            raise UserFileNotFoundError(
                f"--feature-store yes but {split}.fbank.* is missing in {cfg.data}: "
                f"run fairseq-hkd-feature-store {cfg.data} --splits {split}"
            )
        else:
            features = AudioFeatures(cfg.strict_sample_rate, cfg.multichannel)
        if shift:
            features = TimeShiftedFeatures(features, cfg.time_shift_max_ms, cfg.seed)
            logger.info(f"{split}: time shift of 0..{cfg.time_shift_max_ms:g} ms per utterance and epoch")
        cmvn = self._build_normaliser()
        teacher = self._open_teacher(split, [e.id for e in entries], [len(t) for t in targets], entries)
        dataset = CifAsrDataset(
            split, entries, targets, self.tgt_dict, features, cmvn, teacher, shuffle=self.is_training_split(split),
        )
        if self.edge_silence is not None and self.is_training_split(split):
            # --max-tokens bounds the batch the model gets: with the most edge silence any utterance can get
            dataset.batch_extra_frames = self.edge_silence.max_start + self.edge_silence.max_end
        if self.joins.enabled() and self.is_training_split(split):
            # a joined pair of rows is one row of both lengths plus the pause: about half a pause per utterance
            dataset.batch_extra_frames += (self.joins.max_gap + 1) // 2
        if self.tempo is not None and self.is_training_split(split):
            dataset.batch_frame_scale = self.tempo.frame_scale()  # a slowed-down utterance is longer
        self.datasets[split] = dataset
        logger.info(f"{split}: {len(entries)} utterances from {manifest}, teacher {'on' if teacher else 'off'}")

    def _build_cmvn(self):
        """The feature normalisation of --cmvn (global stats: --cmvn-stats, default DATA/cmvn.npz)."""
        return build_cmvn(self.cfg.cmvn, self.cfg.cmvn_stats or os.path.join(self.cfg.data, "cmvn.npz"))

    def _build_normaliser(self):
        """[T, F] fbank -> the model's input: the level matched per --input-level, then --cmvn."""
        cmvn = self._build_cmvn()
        target = resolve_target(self.cfg.input_level, str(self.cfg.cmvn), getattr(cmvn, "mean", None))
        if target is None:
            return cmvn
        logger.info(f"input level: every utterance's speech level matched to {target:.2f} nats before CMVN")
        return LevelMatched(target, cmvn)

    def _open_teacher(self, split: str, utt_ids, target_lengths, entries=None):
        """The split's teacher store per --load-teacher (checked against the targets), or None."""
        if self.cfg.load_teacher == "no":
            return None
        from fairseq_hkd.teacher import store as teacher_store  # other component; imported lazily

        teacher_dir = self.cfg.teacher_dir or self.cfg.data
        store = teacher_store.open_teacher_store(teacher_dir, split)
        if store is None:
            if self.cfg.load_teacher == "yes":
                raise UserFileNotFoundError(
                    f"--load-teacher yes but {teacher_dir} has no teacher store for split {split!r}: "
                    f"run fairseq-hkd-extract-teacher for it"
                )
            return None
        identity = getattr(teacher_store, "teacher_identity", lambda fp: None)(store.fingerprint)
        store.check(utt_ids, target_lengths, self.units.fingerprint(), expected_plm=self._teacher_identity,
                    transcripts=[e.tgt_text for e in entries] if entries else None,
                    locations=[e.where for e in entries] if entries else None)
        self._teacher_identity = self._teacher_identity or identity
        self._teacher_dim = store.dim
        return store

    @property
    def teacher_dim(self) -> Optional[int]:
        """Width D of the teacher states (what the cif_hkd criterion projects to), or None without a
        teacher. Known before the training split is loaded: the training split's store is peeked at."""
        if self._teacher_dim is None and self.cfg.load_teacher != "no":
            from fairseq_hkd.teacher.store import open_teacher_store

            for split in self.cfg.train_subset.split(","):
                store = open_teacher_store(self.cfg.teacher_dir or self.cfg.data, split)
                if store is not None:
                    self._teacher_dim = store.dim
                    break
        return self._teacher_dim

    def filter_indices_by_size(self, indices, dataset, max_positions=None, ignore_invalid_inputs=False):
        """Drop utterances outside [min_source_frames, max_source_frames] or with too long targets,
        logging the count (fairseq's default only checks the upper bounds). When a criterion was
        built (training, fairseq-validate), also drop those whose target (S units incl. </s>) is longer
        than the model's encoder output (T' frames): CIF fires at most once per frame, so the
        teacher-forced losses cannot be computed. Decoding (no criterion) keeps them: the error rate
        counts their missing words."""
        src, tgt = dataset.src_sizes[indices], dataset.tgt_sizes[indices]
        max_src, max_tgt = max_positions if max_positions is not None else self.max_positions()
        too_long = src > max_src
        too_short = src < self.cfg.min_source_frames
        tgt_long = tgt > max_tgt
        cannot_fire = np.zeros_like(too_long)
        if self.teacher_forced and self.encoder_output_lengths is not None:
            cannot_fire = tgt > self.encoder_output_lengths(torch.from_numpy(np.asarray(src, np.int64))).numpy()
        bad = too_long | too_short | tgt_long | cannot_fire
        if bad.any():
            first = dataset.entries[int(indices[bad][0])]
            msg = (f"{dataset.split}: {int(bad.sum())} of {len(indices)} utterances outside the size limits "
                   f"({int(too_long.sum())} longer than {max_src} frames, {int(too_short.sum())} shorter than "
                   f"{self.cfg.min_source_frames} frames, {int(tgt_long.sum())} targets longer than {max_tgt}, "
                   f"{int(cannot_fire.sum())} targets longer than the encoder output (CIF fires at most once "
                   f"per encoder frame)); first: {first.where} ({first.id})")
            if not ignore_invalid_inputs:
                raise UserError(msg + "; adjust --max-source-frames/--min-source-frames/--max-target-length, "
                                "use coarser units or less subsampling for targets longer than the encoder "
                                "output, or pass --skip-invalid-size-inputs-valid-test")
            logger.warning(msg + "; skipped")
        return indices[~bad]

    # training ----------------------------------------------------------------------------------
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """fairseq's train step on the SpecAugment-ed batch (fairseq's Trainer calls this only for
        training updates; validation and generation never see masks), with the forward pass under
        bf16 autocast when ``--autocast-bf16`` says so (the backward follows the forward's dtypes)."""
        sample = self.augment(sample, update_num)
        model.train()
        model.set_num_updates(update_num)
        if hasattr(criterion, "set_num_updates"):
            criterion.set_num_updates(update_num)
        with torch.autograd.profiler.record_function("forward"), self.training_autocast(model, optimizer):
            loss, sample_size, logging_output = criterion(model, sample)
        if ignore_grad:
            loss *= 0
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)
        return loss, sample_size, logging_output

    def training_autocast(self, model, optimizer=None):
        """The autocast context of a training forward pass: fairseq's own CUDA autocast under
        ``--amp`` (as FairseqTask.train_step does), bf16 per ``--autocast-bf16`` on the model's device
        (yes: CPU or GPU; auto: a CPU with native bf16), otherwise a no-op (fairseq's --fp16 casts the
        model instead)."""
        from fairseq.optim.amp_optimizer import AMPOptimizer

        if isinstance(optimizer, AMPOptimizer):
            return torch.autocast("cuda", dtype=torch.float16)
        device = next(model.parameters()).device.type
        if self._use_bf16 is None:
            mode = self.cfg.autocast_bf16
            native = cpu_has_native_bf16() if device == "cpu" else device == "cuda" and torch.cuda.is_bf16_supported()
            self._use_bf16 = mode == "yes" or (mode == "auto" and device == "cpu" and native)
            if mode == "yes" and device == "cuda" and not native:
                raise UserError("--autocast-bf16 yes: this GPU does not support bf16; train with --fp16 or --amp")
            if mode != "no":
                logger.info(f"training forward passes under bf16 autocast: {'on' if self._use_bf16 else 'off'} "
                            f"(--autocast-bf16 {mode} on {device}, native bf16: {native})")
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self._use_bf16)

    def augment(self, sample, update_num: int):
        """``sample`` with sentence joins (``--join-prob``), tempo perturbation (``--tempo-min/max``), VTLP
        (``--vtlp-min/max``), edge silence (``--edge-silence-*``), noise (``--noise-prob``) and then SpecAugment
        applied to ``net_input.src_tokens`` [B, T, F] and ``src_lengths`` (a new dict; the input is not modified). Utterance b's draws come from (seed,
        update_num, sample["id"][b]) and cover only its ``src_lengths[b]`` frames: they do not depend on
        batching, on the process (2 GPUs = --update-freq 2 on 1) or on where a run was resumed, and differ
        between updates. A batch's join draw comes from (seed, update_num, its first id); a joined row
        draws as its first utterance."""
        if (self.specaugment is None and self.edge_silence is None and self.tempo is None and self.noise is None
                and self.vtlp is None and not self.joins.enabled()) or not sample or "net_input" not in sample:
            return sample
        if self._silence_bank is None and (self.edge_silence is not None or self.joins.enabled()):
            self._silence_bank = silence_bank(self._build_cmvn())
        if self.joins.enabled():
            sample = join_batch(sample, self._silence_bank, self.joins, (self.cfg.seed, int(update_num),
                                int(sample["id"][0]), 2), self.tgt_dict.eos(), self.tgt_dict.pad())
        net_input = sample["net_input"]
        src, lengths = net_input["src_tokens"], net_input["src_lengths"]
        ids = [int(i) for i in sample["id"].tolist()]
        if self.tempo is not None:
            seeds = [(self.cfg.seed, int(update_num), i, 3) for i in ids]
            src, lengths, _ = tempo_batch(src, lengths, self.tempo, seeds, sample.get("target_lengths"),
                                          self.encoder_output_lengths)
        if self.vtlp is not None:
            seeds = [(self.cfg.seed, int(update_num), i, 5) for i in ids]
            src, _ = vtlp_batch(src, lengths, self.vtlp, seeds, *self.raw_cmvn())
        if self.edge_silence is not None:
            seeds = [(self.cfg.seed, int(update_num), i, 1) for i in ids]
            src, lengths = pad_edges_batch(src, lengths, self._silence_bank, self.edge_silence, seeds)
        if self.noise is not None:
            bank, power, mean, std = self.noise_augmentation_bank()
            seeds = [(self.cfg.seed, int(update_num), i, 4) for i in ids]
            src = add_noise_batch(src, lengths, bank, self.noise, seeds, mean, std, power)
        if self.specaugment is not None:
            seeds = [(self.cfg.seed, int(update_num), i) for i in ids]
            src = spec_augment_batch(src, lengths, self.specaugment, seeds)
        return {**sample, "net_input": {**net_input, "src_tokens": src, "src_lengths": lengths}}

    # model / generation -------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint: bool = False):
        """Build the model and record what criterions need from it (step 1 of the contract in the
        class docstring): ``student_dims``, the widths of the CIF embeddings and of the decoder's
        pre-final states (the cif_hkd projections' inputs; None for a model without them), and
        ``encoder_output_lengths``."""
        model = super().build_model(cfg, from_checkpoint)
        enc, dec = getattr(model, "encoder_embed_dim", None), getattr(model, "decoder_embed_dim", None)
        self.student_dims = StudentDims(int(enc), int(dec)) if enc and dec else None
        self.encoder_output_lengths = getattr(model, "encoder_output_lengths", None)
        self.model_built = True
        return model

    def build_criterion(self, cfg, from_checkpoint: bool = False):
        """fairseq's criterion (step 2 of the contract): needs the model built first, and marks the
        task as computing teacher-forced losses, so that filter_indices_by_size also drops targets
        longer than the encoder output."""
        if not self.model_built:
            raise ValueError(f"task cif_asr: {MODEL_FIRST} (the criterion and the length filter need the model's sizes)")
        self.teacher_forced = True
        self.note_training_criterion(cfg)
        self.trained_join_prob = float(self.cfg.join_prob)
        return super().build_criterion(cfg, from_checkpoint)

    # what the model was trained with (checkpoints keep it as fairseq's "task_state") --------------
    def note_training_criterion(self, criterion_cfg) -> None:
        """Record the criterion's CTC weight (cif and cif_hkd have ``ctc_weight``; others: unknown).
        Loaders of checkpoints saved before 2026-12-03 (no task state) pass the checkpoint's
        ``cfg["criterion"]``."""
        weight = criterion_cfg.get("ctc_weight", None) if hasattr(criterion_cfg, "get") else None
        weight = getattr(criterion_cfg, "ctc_weight", None) if weight is None else weight
        if weight is not None:
            self.trained_ctc_weight = float(weight)

    def note_checkpoint(self, checkpoint_cfg) -> None:
        """After loading a checkpoint: a checkpoint saved before 2026-12-03 has no task state, so
        its CTC weight comes from its criterion config (``checkpoint_cfg``: the state's ``cfg``)."""
        if self.trained_ctc_weight is None and checkpoint_cfg.get("criterion") is not None:
            self.note_training_criterion(checkpoint_cfg["criterion"])

    def state_dict(self):
        state = {"trained_ctc_weight": self.trained_ctc_weight, "trained_join_prob": self.trained_join_prob}
        return {k: v for k, v in state.items() if v is not None}

    def load_state_dict(self, state_dict) -> None:
        for key in ("trained_ctc_weight", "trained_join_prob"):
            if state_dict and state_dict.get(key) is not None:
                setattr(self, key, float(state_dict[key]))

    def decoding_inner_eos(self, requested: Optional[str] = None) -> bool:
        """Whether ``</s>`` competes at inner decoding steps (``requested``, default ``--cif-inner-eos``;
        auto: the model was trained with sentence joins)."""
        mode = str(self.cfg.cif_inner_eos if requested is None else requested)
        return mode == "yes" or (mode == "auto" and (self.trained_join_prob or 0.0) > 0)

    def decoding_ctc_weight(self, requested: Optional[float] = None, count_search: Optional[int] = None) -> float:
        """The CTC weight of the count search (``requested``, default ``--cif-ctc-weight``; with
        ``count_search``, default ``--cif-count-search``), or 0 with a warning when the model was
        trained without the CTC loss: its CTC head is untrained, its scores would choose at random."""
        weight = float(self.cfg.cif_ctc_weight if requested is None else requested)
        count_search = self.cfg.cif_count_search if count_search is None else count_search
        if weight > 0 and self.trained_ctc_weight == 0 and count_search >= 1:
            logger.warning(f"the model was trained without the CTC loss (--ctc-weight 0), so its CTC head is "
                           f"untrained: candidate counts are chosen by the decoder score alone (CTC weight 0 "
                           f"instead of {weight:g})")
            return 0.0
        return weight

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, prefix_allowed_tokens_fn=None):
        from fairseq_hkd.generation.cif_generator import build_cif_generator  # other component; lazily

        lm_model = (extra_gen_cls_kwargs or {}).get("lm_model")  # fairseq-generate loaded --lm-path
        return build_cif_generator(models, args, self.tgt_dict, eos_slack=self.cfg.cif_eos_slack,
                                   lm_model=lm_model, dict_path=self.units.dict_path,
                                   count_search=self.cfg.cif_count_search, ctc_weight=self.decoding_ctc_weight(),
                                   inner_eos=self.decoding_inner_eos())

    def build_bpe(self, args):
        """The units decoder, so fairseq-generate prints (and scores) words, whatever --bpe says."""
        return UnitsDecoder(self.units)

    def build_tokenizer(self, args):
        return None
