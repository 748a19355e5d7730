"""CPU accelerations. Training and scoring ask `seam.py`, never the modules beside it; this
package's own import stays light (no torch), so the command line can start building the
compiled layers (kernel_build) while torch imports."""
