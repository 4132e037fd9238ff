# conf/tiny_edge_mild.sh plus a time shift: each training utterance's waveform loses its first 0..20 ms
# (fairseq_hkd/data/time_shift.py), so the model sees every frame phase and slightly clipped onsets, as
# voice-activity segments of long recordings give it. The shift needs the waveforms: features are
# computed on the fly instead of read from the feature store. Seed 1 (BENCHMARKS.md, long recordings):
# WER no longer depends on where a file starts, but clean test WER 32.35 vs 31.33 (tiny_edge_mild).
#   examples/synth/train.sh --exp exp/synth/shift --criterion cif_hkd --conf tiny_shift
. "$HERE/conf/tiny_edge_mild.sh"
task_args+=(--feature-store no --time-shift-max-ms 20)
