"""Run every benchmark in one process: ``make bench``."""

import bench_fig2_panel
import bench_mets_scaling

if __name__ == "__main__":
    bench_fig2_panel.main([])
    bench_mets_scaling.main([])
