from setuptools import find_packages, setup

setup(
    name="reszoo",
    version="0.1.0",
    description="Plain, ResNet, pre-activation ResNet and DenseNet models by name, for Keras 3",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["reszoo", "reszoo.*", "training", "training.*"]),
    package_data={"reszoo": ["data/*.npz"]},
    install_requires=["keras>=3.15.1,<4", "numpy"],
    extras_require={
        "tf": ["tensorflow>=2.21,<2.22", "tensorflow-datasets>=4.9", "tensorboard", "absl-py"],
        "export": ["tf2onnx>=1.17", "onnxruntime>=1.20"],
        "lab": ["matplotlib>=3.7"],
        "hub": ["keras-hub>=0.32"],
        "dev": [
            "tensorflow>=2.21,<2.22",
            "tensorflow-datasets>=4.9",
            "tensorboard",
            "absl-py",
            "jax>=0.10.2",
            "jaxlib>=0.10.2",
            "tf2onnx>=1.17",
            "onnxruntime>=1.20",
            "matplotlib>=3.7",
            "keras-hub>=0.32",
            "pytest>=8",
            "pytest-xdist>=3",
        ],
    },
)
