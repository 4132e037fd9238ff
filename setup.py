from setuptools import find_packages, setup

setup(
    name="fairseq-hkd",
    version="0.1.0",
    description="CIF speech recognition with hierarchical knowledge distillation from PLMs, as a fairseq plugin",
    packages=find_packages(include=["fairseq_hkd", "fairseq_hkd.*"]),
    python_requires=">=3.9",
    install_requires=[],  # installed in a fixed order by scripts/setup.sh; see requirements.txt
    entry_points={"console_scripts": []},
)
