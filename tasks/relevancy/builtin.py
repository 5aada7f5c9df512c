"""The built-in relevancy methods, in the order they are listed and compared (each registers on import)."""
from mapcap.tasks.relevancy import chefer, legrad, grad_eclip, gradcam, gradient, random_map  # noqa: F401
