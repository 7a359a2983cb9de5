"""srkit on a Ray cluster: an actor pool of `Upscaler`s over Ray Data (`pip install 'srkit[cluster]'`).

Ray is imported only when a function here runs, so `import srkit.cluster` works without it."""

from __future__ import annotations

from srkit.cluster.images import (
    MANIFEST_NAME,
    ClusterOptions,
    ClusterReport,
    NodeSummary,
    upscale_dataset,
    upscale_folder_on_ray,
)

__all__ = ["MANIFEST_NAME", "ClusterOptions", "ClusterReport", "NodeSummary", "upscale_dataset",
           "upscale_folder_on_ray"]
