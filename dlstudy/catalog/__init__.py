"""A local catalog of an archive: harvest QIDO once, select cohorts offline, sync by difference.

windows   the StudyDate / StudyTime windows a pull asks for, and how they split
store     the DuckDB file: schema, a pull's progress, the merge at its end
harvest   the pull itself: windows, paging, counts, the tail of a grown archive
query     cohorts (filters, --where, SQL) and exports, offline
status    the catalog against an output folder: complete, partial, missing
"""
