from setuptools import find_packages, setup

setup(
    name="fairseq-hkd",
    version="0.1.0",
    description="CIF speech recognition with hierarchical knowledge distillation from PLMs, as a fairseq plugin",
    packages=find_packages(include=["fairseq_hkd", "fairseq_hkd.*"]),
    python_requires=">=3.9",
    install_requires=[],  # installed in a fixed order by scripts/setup.sh; see requirements.txt
    entry_points={
        "console_scripts": [
            "fairseq-hkd-cmvn = fairseq_hkd.data.cli_features:cmvn_cli_main",
            "fairseq-hkd-feature-store = fairseq_hkd.data.cli_features:store_cli_main",
            "fairseq-hkd-build-dict = fairseq_hkd.teacher.build_dict:cli_main",
            "fairseq-hkd-extract-teacher = fairseq_hkd.teacher.cli_extract:cli_main",
            "fairseq-hkd-transcribe = fairseq_hkd.runtime.cli:transcribe_main",  # --backend onnx: torch-free
            "fairseq-hkd-plot = fairseq_hkd.generation.plot:cli_main",
            "fairseq-hkd-average-checkpoints = fairseq_hkd.generation.average:cli_main",
            "fairseq-hkd-export = fairseq_hkd.export.onnx_export:cli_main",
        ]
    },
)
