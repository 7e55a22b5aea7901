"""ceres-supervisor: keeps a CeresDB/HoraeDB cluster in WithMeta mode running on Docker hosts."""

__version__ = "0.2.0"
