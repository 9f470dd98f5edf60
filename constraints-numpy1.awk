# The NumPy-1 pin set from constraints.txt: each `# numpy1: NAME==VERSION` line replaces NAME's pin
# (or adds NAME). Used by the Makefile (.venv-numpy1) and the Dockerfile (a ROS distro's NumPy 1.x).
#   awk -f constraints-numpy1.awk constraints.txt constraints.txt > numpy1-constraints.txt
NR == FNR { if (sub(/^# numpy1: /, "")) { split($0, pin, "=="); override[tolower(pin[1])] = $0 } next }
/^[A-Za-z0-9]/ { split($0, pin, "=="); if (tolower(pin[1]) in override) next }
{ print }
END { for (name in override) print override[name] }
