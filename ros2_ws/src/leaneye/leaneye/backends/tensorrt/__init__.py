"""The TensorRT backend (`backend.TensorRTBackend`, registered as "tensorrt"), its builder and its
build-on-target cache. Importing this package imports neither TensorRT nor CUDA: `options` and
`platform` are pure Python (the engine manifest's target block uses them); the rest imports TensorRT
and cuda-python only when an engine is loaded or built. docs/tensorrt.md.
"""
