"""The cif_asr task: CLI registration, the sample dict contract, batching, filtering, SpecAugment,
teacher states, and word decoding for fairseq-generate."""
import logging
import shutil
import subprocess

import numpy as np
import pytest
import torch

from corpus import setup_task
from fairseq_hkd.data.audio import read_audio
from fairseq_hkd.data.cli_features import store_cli_main
from fairseq_hkd.data.cmvn import utterance_cmvn
from fairseq_hkd.data.fbank import fbank
from fairseq_hkd.data.manifest import read_manifest

TASK_OPTIONS = ["--unit", "--tokenizer-dir", "--spm-model", "--max-unk-ratio", "--strict-sample-rate", "--cmvn",
                "--feature-store", "--spec-aug-freq-width", "--spec-aug-time-width", "--max-source-frames",
                "--load-teacher", "--teacher-dir"]


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_fairseq_train_cli_lists_task_options(repo_root, venv_bin, tmp_path, absolute):
    user_dir = str(repo_root / "fairseq_hkd") if absolute else "fairseq_hkd"
    cwd = tmp_path if absolute else repo_root
    r = subprocess.run([str(venv_bin / "fairseq-train"), "--user-dir", user_dir, "--task", "cif_asr", "--help"],
                       cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for opt in TASK_OPTIONS:
        assert opt in r.stdout, f"{opt} missing from fairseq-train --help"


@pytest.fixture
def data(tiny_corpus, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_corpus, dst)
    return dst


def batches(task, split, max_tokens=100000, epoch=1, num_workers=0, **kw):
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=max_tokens, max_positions=task.max_positions(),
                                  num_workers=num_workers, epoch=epoch, **kw)
    return list(itr.next_epoch_itr(shuffle=False))


def test_sample_dict_contract(tiny_corpus):
    task = setup_task(tiny_corpus)
    task.load_dataset("valid")
    entries = {e.id: e for e in read_manifest(tiny_corpus / "valid.tsv")}
    (s,) = batches(task, "valid")
    d, B = task.target_dictionary, 4
    assert (d.bos(), d.pad(), d.eos(), d.unk()) == (0, 1, 2, 3)
    assert s["id"].dtype == torch.long and s["id"].shape == (B,) and sorted(s["utt_id"]) == sorted(entries)
    src, src_len = s["net_input"]["src_tokens"], s["net_input"]["src_lengths"]
    assert src.dtype == torch.float32 and src.shape == (B, int(src_len.max()), 80)
    for b, uid in enumerate(s["utt_id"]):
        n = entries[uid].n_samples
        assert src_len[b] == 1 + (n - 400) // 160
        expected = utterance_cmvn(fbank(read_audio(entries[uid].audio)))  # valid: no SpecAugment
        np.testing.assert_allclose(src[b, : src_len[b]].numpy(), expected, atol=1e-5)
        assert (src[b, src_len[b]:] == 0).all()
        words = entries[uid].tgt_text
        S = int(s["target_lengths"][b])
        tgt = s["target"][b]
        assert S == len(words) + 1 and tgt[S - 1] == d.eos() and (tgt[S:] == d.pad()).all()
        assert task.build_bpe(None).decode(d.string(tgt[:S])) == words
        prev = s["net_input"]["prev_output_tokens"][b]
        assert prev[0] == d.eos() and torch.equal(prev[1:S], tgt[: S - 1]) and (prev[S:] == d.pad()).all()
    assert s["ntokens"] == int(s["target_lengths"].sum()) and s["nsentences"] == B
    assert "teacher_states" not in s


def test_batches_by_frames_keep_every_utterance(tiny_corpus):
    task = setup_task(tiny_corpus)
    task.load_dataset("train")
    ds = task.dataset("train")
    max_frames = 2 * int(ds.src_sizes.max())
    bs = batches(task, "train", max_tokens=max_frames, required_batch_size_multiple=8)
    seen = sorted(int(i) for b in bs for i in b["id"])
    assert seen == list(range(len(ds)))  # fairseq alone would drop the last batch (see compat.py)
    for b in bs:
        assert b["net_input"]["src_tokens"].shape[0] * b["net_input"]["src_tokens"].shape[1] <= max_frames


def test_length_filter_counts_and_raises(tiny_corpus, caplog):
    task = setup_task(tiny_corpus, "--max-source-frames", "100", "--min-source-frames", "80")
    task.load_dataset("train")
    ds = task.dataset("train")
    keep = (ds.src_sizes <= 100) & (ds.src_sizes >= 80)
    assert 0 < keep.sum() < len(ds)
    with caplog.at_level(logging.WARNING):
        kept = task.filter_indices_by_size(np.arange(len(ds)), ds, task.max_positions(), ignore_invalid_inputs=True)
    assert sorted(kept) == list(np.flatnonzero(keep))
    assert any(f"{(~keep).sum()} of {len(ds)} utterances outside the size limits" in r.message for r in caplog.records)
    with pytest.raises(ValueError, match=r"train\.tsv:\d+ .*--skip-invalid-size-inputs-valid-test"):
        task.filter_indices_by_size(np.arange(len(ds)), ds, task.max_positions(), ignore_invalid_inputs=False)


class Capture(torch.nn.Module):
    """Stands in for the model, criterion and optimizer of ``task.train_step``: records the sample the
    criterion is given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def set_num_updates(self, num_updates):
        pass

    def forward(self, model, sample):
        self.seen.append(sample)
        return self.w * 0, 1, {}

    def backward(self, loss):
        loss.backward()


def test_specaugment_only_in_train_step(tiny_corpus):
    """A training split read through the dataset (fairseq-generate --gen-subset train, validation,
    fairseq-hkd-transcribe) is clean; only train_step masks, per utterance within its own frames,
    seeded by (seed, update number, utterance index)."""
    from fairseq_hkd.data.specaugment import spec_augment

    task = setup_task(tiny_corpus)
    plain = setup_task(tiny_corpus, "--spec-aug-prob", "0")
    other_seed = setup_task(tiny_corpus, "--seed", "2")
    for t in (task, plain, other_seed):
        t.load_dataset("train")
    assert task.specaugment is not None and plain.specaugment is None
    ds = task.dataset("train")
    entries = {e.id: e for e in ds.entries}
    (s,) = batches(task, "train")  # the batches fairseq-generate --gen-subset train decodes
    (ref,) = batches(plain, "train")
    assert torch.equal(s["net_input"]["src_tokens"], ref["net_input"]["src_tokens"])
    src, lengths = s["net_input"]["src_tokens"], s["net_input"]["src_lengths"]
    for b, uid in enumerate(s["utt_id"][:2]):
        expected = utterance_cmvn(fbank(read_audio(entries[uid].audio)))
        np.testing.assert_allclose(src[b, : lengths[b]].numpy(), expected, atol=1e-5)
    assert int(lengths.min()) < src.size(1)  # some utterance is padded

    # train_step hands the criterion a masked batch and leaves the caller's sample alone
    cap = Capture()
    before = src.clone()
    task.train_step(s, cap, cap, cap, update_num=3)
    assert torch.equal(s["net_input"]["src_tokens"], before)
    aug = cap.seen[0]["net_input"]["src_tokens"]
    assert cap.seen[0]["target"] is s["target"] and aug.shape == src.shape
    n_masked = 0
    for b in range(src.size(0)):
        n = int(lengths[b])
        changed = aug[b] != src[b]
        assert not changed[n:].any() and (aug[b, n:] == 0).all()  # padding untouched
        assert (aug[b][changed] == 0).all()
        n_masked += int(changed.any())
        # the same masks as SpecAugment on the utterance alone with its (seed, update, index) generator
        rng = np.random.default_rng([1, 3, int(s["id"][b])])
        np.testing.assert_array_equal(aug[b, :n].numpy(), spec_augment(src[b, :n].numpy(), task.specaugment, rng))
    assert n_masked >= src.size(0) - 1  # a zero-width draw can leave one untouched
    plain.train_step(s, cap, cap, cap, update_num=3)
    assert torch.equal(cap.seen[-1]["net_input"]["src_tokens"], src)  # --spec-aug-prob 0: off

    # reproducible: same (seed, update, index) -> same masks, whatever else is in the batch
    assert torch.equal(task.augment(s, 3)["net_input"]["src_tokens"], aug)
    k = int(lengths.argmin())
    alone = ds.collater([ds[int(s["id"][k])]])
    np.testing.assert_array_equal(task.augment(alone, 3)["net_input"]["src_tokens"][0].numpy(), aug[k, : lengths[k]].numpy())
    # fresh masks at every update and for another seed
    assert not torch.equal(task.augment(s, 4)["net_input"]["src_tokens"], aug)
    assert not torch.equal(other_seed.augment(s, 3)["net_input"]["src_tokens"], aug)
    # validation (valid_step) is never masked
    task.valid_step(s, cap, cap)
    assert torch.equal(cap.seen[-1]["net_input"]["src_tokens"], src)


def test_feature_store_and_global_cmvn_options(data):
    from fairseq_hkd.data.cli_features import cmvn_cli_main

    store_cli_main([str(data), "--splits", "valid", "--dtype", "float32"])
    cmvn_cli_main([str(data), "--split", "train"])
    stored = setup_task(data, "--feature-store", "yes", "--cmvn", "global")
    audio = setup_task(data, "--feature-store", "no", "--cmvn", "global")
    for t in (stored, audio):
        t.load_dataset("valid")
    assert type(stored.dataset("valid").features).__name__ == "StoredFeatures"
    for i in range(4):
        np.testing.assert_allclose(stored.dataset("valid")[i]["source"], audio.dataset("valid")[i]["source"], atol=1e-5)
    with pytest.raises(FileNotFoundError, match="fairseq-hkd-feature-store"):
        stored.load_dataset("train")
    # with the store, training no longer needs the audio files
    shutil.rmtree(data / "wav")
    stored.load_dataset("valid")
    assert stored.dataset("valid")[0]["source"].shape[1] == 80


def test_teacher_states_padded_into_sample(data):
    from fairseq_hkd.teacher.store import TeacherStoreWriter

    task = setup_task(data)
    task.load_dataset("valid")
    ds = task.dataset("valid")
    D = 6
    rng = np.random.default_rng(0)
    states = {e.id: rng.standard_normal((len(t), D)).astype(np.float32) for e, t in zip(ds.entries, ds.targets)}
    w = TeacherStoreWriter(str(data), "valid", [(u, len(s)) for u, s in states.items()], D,
                           fingerprint={"units": task.units.fingerprint()},
                           transcripts={e.id: e.tgt_text for e in ds.entries})
    for u, s in states.items():
        w.write(u, s)
    w.close()
    task = setup_task(data, "--load-teacher", "yes")
    assert task.teacher_dim is None  # only the training split's store defines it before loading
    task.load_dataset("valid")
    assert task.teacher_dim == D
    (s,) = batches(task, "valid")
    ts = s["teacher_states"]
    assert ts.dtype == torch.float32 and ts.shape == (*s["target"].shape, D)
    for b, uid in enumerate(s["utt_id"]):
        S = int(s["target_lengths"][b])
        np.testing.assert_array_equal(ts[b, :S].numpy(), states[uid])
        assert (ts[b, S:] == 0).all()
    with pytest.raises(FileNotFoundError, match="no teacher store for split 'train'"):
        task.load_dataset("train")
    off = setup_task(data, "--load-teacher", "no")
    off.load_dataset("valid")
    assert "teacher_states" not in batches(off, "valid")[0]
    # a transcript edited after extraction with the same characters (same S, same symbols): the load
    # fails naming the manifest line, instead of training against the old sentence's states
    manifest = data / "valid.tsv"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    row = lines[2].split("\t")
    row[3] = row[3][::-1]
    assert sorted(row[3]) == sorted(lines[2].split("\t")[3]) and row[3] != lines[2].split("\t")[3]
    lines[2] = "\t".join(row)
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^{manifest}:3: utterance '{row[0]}' of split 'valid': the transcript "
                                         r".* rebuild the store: fairseq-hkd-extract-teacher --manifest "):
        setup_task(data, "--load-teacher", "yes").load_dataset("valid")


def test_targets_longer_than_the_encoder_output_filtered_for_training(data, caplog):
    """S > T' (CIF fires at most once per encoder frame): a counted skip or an error naming the
    line once a criterion is built (training, validation); decoding (no criterion) keeps them."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    manifest = data / "train.tsv"
    lines = manifest.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    col = header.index("tgt_text")
    for k in (2, 5):  # two utterances get transcripts far longer than ~T/4 encoder frames allow
        row = lines[k].split("\t")
        row[col] = " ".join([row[col]] * 40)
        lines[k] = "\t".join(row)
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")

    args = options.parse_args_and_arch(options.get_training_parser(), [str(data), "--task", "cif_asr", "--arch",
                                                                       "cif_tiny", "--criterion", "cif"])
    cfg = convert_namespace_to_omegaconf(args)
    task = setup_task(data)
    model = task.build_model(cfg.model).eval()
    task.load_dataset("train")
    ds = task.dataset("train")
    everything = np.arange(len(ds))
    # decoding: nothing dropped (default size limits hold for every utterance)
    assert list(task.filter_indices_by_size(everything, ds, task.max_positions(), ignore_invalid_inputs=False)) \
        == list(everything)
    # the encoder's real output lengths, from a forward pass
    with torch.no_grad():
        enc = [int(model.forward_encoder(ds[i]["source"][None], torch.tensor([ds.src_sizes[i]]))["encoder_lengths"][0])
               for i in everything]
    too_long = ds.tgt_sizes > np.array(enc)
    assert sorted(np.flatnonzero(too_long)) == [1, 4]  # manifest lines 3 and 6
    criterion = task.build_criterion(cfg.criterion)
    with caplog.at_level(logging.WARNING):
        kept = task.filter_indices_by_size(everything, ds, task.max_positions(), ignore_invalid_inputs=True)
    assert list(kept) == list(np.flatnonzero(~too_long))
    assert any("2 of 8 utterances outside the size limits" in r.message and "2 targets longer than the encoder "
               "output" in r.message and "train.tsv:3 " in r.message for r in caplog.records)
    with pytest.raises(ValueError, match=r"train\.tsv:3 .*--skip-invalid-size-inputs-valid-test"):
        task.filter_indices_by_size(everything, ds, task.max_positions(), ignore_invalid_inputs=False)
    # what the filter prevents: the loss of such an utterance cannot be computed
    with pytest.raises(RuntimeError, match="CIF fired"):
        criterion(model.train(), ds.collater([ds[1]]))


def test_items_are_writable_copies_of_the_memory_mapped_stores(data):
    """Feature store read with --cmvn none and the teacher store are read-only memmaps: items must be
    writable copies (torch warns on a read-only array, and writing to one is undefined)."""
    import warnings

    from fairseq_hkd.teacher.store import TeacherStoreWriter

    store_cli_main([str(data), "--splits", "valid", "--dtype", "float32"])
    task = setup_task(data, "--feature-store", "yes", "--cmvn", "none")
    task.load_dataset("valid")
    ds = task.dataset("valid")
    w = TeacherStoreWriter(str(data), "valid", [(e.id, len(t)) for e, t in zip(ds.entries, ds.targets)], 4,
                           fingerprint={"units": task.units.fingerprint()},
                           transcripts={e.id: e.tgt_text for e in ds.entries})
    for e, t in zip(ds.entries, ds.targets):
        w.write(e.id, np.ones((len(t), 4), np.float32))
    w.close()
    task = setup_task(data, "--feature-store", "yes", "--cmvn", "none", "--load-teacher", "yes")
    task.load_dataset("valid")
    ds = task.dataset("valid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "The given NumPy array is not writable"
        item = ds[0]
    first = item["source"].clone()
    item["source"].add_(1.0)
    item["teacher"].add_(1.0)
    again = ds[0]
    assert torch.equal(again["source"], first) and (again["teacher"] == 1).all()
