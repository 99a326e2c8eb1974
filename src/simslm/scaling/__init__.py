"""Stage 6, the scaling study: isoFLOP sweeps, scaling-law fits, the compute planner, the report.

`sweep` plans and runs grids of training runs and reads their results; `fit` holds the
Chinchilla approaches with bootstrap intervals and the compute-optimal planner; `report`
draws the figures and tables.
"""
