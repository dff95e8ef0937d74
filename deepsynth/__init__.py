"""DeepSynth: summarize long documents by looking at their page images.

The library holds the parts (`deepsynth.data`, `deepsynth.model`); the entry scripts in
`ray_jobs/` and the apps in `serve/` wire them together on Ray.
"""

__version__ = "0.1.0"
