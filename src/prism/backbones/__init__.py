"""Vision-language backbones: loaders that return transformers' own model classes."""
