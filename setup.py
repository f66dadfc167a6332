from setuptools import setup

setup(
    name="nnunet-mem-cif",
    version="0.1.0",
    description="nnU-Net v2 plugin: semi-supervised multi-modal brain tumor segmentation with MEM and CIF "
                "(modality-specific enhancement and complementary information fusion)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # the repo keeps architectures/ and trainers/ at its top level; they are installed inside our namespace
    packages=["nnunet_mem_cif", "nnunet_mem_cif.ssl", "nnunet_mem_cif.architectures", "nnunet_mem_cif.trainers"],
    package_dir={"nnunet_mem_cif.architectures": "architectures", "nnunet_mem_cif.trainers": "trainers"},
    # the folder that nnUNet_extTrainer points at: one uniquely named module re-exporting our trainers
    package_data={"nnunet_mem_cif": ["nnunet_ext/nnunet_mem_cif_trainers.py"]},
    install_requires=[
        # pinned to the minor versions this plugin is tested with (trainer internals change between minors)
        "nnunetv2>=2.8.1,<2.9",
        "dynamic-network-architectures>=0.4.4,<0.5",
        "batchgeneratorsv2>=0.3.6,<0.4",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2",
        "torch>=2.1.2,!=2.9.*",
        "SimpleITK>=2.2",
        "numpy>=1.24",
        "scipy>=1.10",
        "tqdm",
        "nilearn>=0.10",  # MNI152 anatomy bundled in the wheel, for make-phantom / demo (no download)
    ],
    # medpy (GPL-3) only checks our metrics in the tests; it is never a runtime dependency
    extras_require={"test": ["pytest>=7.3", "medpy>=0.5"]},
    entry_points={"console_scripts": ["nnunet-mem-cif=nnunet_mem_cif.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
)
