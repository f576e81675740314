"""Text classifiers: Hugging Face folders as models, raw text tokenized into the model's inputs."""
