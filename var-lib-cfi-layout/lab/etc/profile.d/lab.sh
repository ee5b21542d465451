# Set by cfi for every machine of group "lab".
export LAB_PRINTER=lab-laser
