"""sagemaker-pipe: SageMaker Pipe input mode, off AWS."""

__version__ = "0.1.0"
