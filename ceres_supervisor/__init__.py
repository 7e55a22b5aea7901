"""ceres-supervisor: keeps a CeresDB/HoraeDB cluster in WithMeta mode running on a Docker host."""

__version__ = "0.1.0"
