"""The task <-> criterion contract (docs/DESIGN.md, "Task <-> criterion"): build_model records the
student widths as a frozen StudentDims, build_criterion needs the model first (a one-line error
naming the order), and cif_hkd sizes its projections from StudentDims and the teacher width."""
import dataclasses

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from fairseq_hkd.criterions.cif_hkd import CifHkdCriterion, CifHkdCriterionConfig
from fairseq_hkd.tasks.cif_asr import StudentDims

from train_runs import HKD, TINY_MODEL, make_hkd_data

ORDER = r"build the model before the criterion: task\.build_model\(cfg\.model\), then task\.build_criterion\(cfg\.criterion\)"


@pytest.fixture(scope="module")
def hkd_data(tmp_path_factory):
    return make_hkd_data(tmp_path_factory.mktemp("contract"), n_train=2, n_valid=1)


def _setup(data, *extra, criterion=HKD):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--task", "cif_asr", *TINY_MODEL, *criterion, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    return tasks.setup_task(cfg.task), cfg


def test_build_model_records_student_dims_and_cif_hkd_sizes_its_projections(hkd_data):
    task, cfg = _setup(hkd_data, "--decoder-embed-dim", "96")  # C = 144 (cif_tiny), C' = 96
    assert task.student_dims is None and task.teacher_forced is False
    model = task.build_model(cfg.model)
    assert task.student_dims == StudentDims(cif=144, decoder=96)
    assert task.encoder_output_lengths(torch.tensor([17, 100])).tolist() == [5, 25]  # ceil(ceil(T/2)/2)
    criterion = task.build_criterion(cfg.criterion)
    assert task.teacher_forced is True
    assert task.teacher_dim == 16  # the tiny BERT's width, from the training split's store
    assert criterion.acd_proj.weight.shape == (16, 144) and criterion.lrd_proj.weight.shape == (16, 96)
    assert model.decoder_embed_dim == 96


@pytest.mark.parametrize("criterion", ["cif", "cif_hkd"])
def test_criterion_before_model_names_the_order(hkd_data, criterion):
    task, cfg = _setup(hkd_data, criterion=HKD if criterion == "cif_hkd" else ("--criterion", "cif"))
    with pytest.raises(ValueError, match="task cif_asr: " + ORDER):
        task.build_criterion(cfg.criterion)
    assert task.teacher_forced is False


def test_cif_hkd_on_a_task_without_student_dims_names_the_order(hkd_data):
    """The criterion's own check, for tasks that build criterions some other way (stand-ins)."""
    task, _ = _setup(hkd_data)
    with pytest.raises(ValueError, match=r"criterion cif_hkd needs the student model's widths \(task\.student_dims "
                                         r"is unset\): " + ORDER):
        CifHkdCriterion(CifHkdCriterionConfig(sentence_avg=False), task)


def test_student_dims_is_typed_and_frozen():
    dims = StudentDims(cif=256, decoder=512)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dims.cif = 1
    for bad in (0, -3, 2.0, True, None):
        with pytest.raises(ValueError, match="StudentDims.cif must be a positive int"):
            StudentDims(cif=bad, decoder=4)

    class StandIn:  # benchmarks/bench_hkd.py and tests/test_hkd_criterion.py set a mapping
        student_dims = {"cif": 8, "decoder": 4}

    assert StudentDims.of(StandIn(), "cif_hkd") == StudentDims(8, 4)
    StandIn.student_dims = {"encoder": 8}
    with pytest.raises(TypeError, match="task.student_dims must be a StudentDims"):
        StudentDims.of(StandIn(), "cif_hkd")
