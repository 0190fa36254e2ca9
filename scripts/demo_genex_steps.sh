# Sourced, not run: GenEx-Explorer's fine-tuning steps in the demo, TRAIN_STEPS from GENEX_TRAIN_STEPS (default 40, what fits the
# demo's minutes on 2 CPU cores; 1200 is the longer run the README reports). demo.sh checks it before either pipeline starts.
TRAIN_STEPS=${GENEX_TRAIN_STEPS:-40}
[[ $TRAIN_STEPS =~ ^[1-9][0-9]*$ ]] || { echo "error: GENEX_TRAIN_STEPS=$TRAIN_STEPS: give a positive whole number of fine-tuning steps" >&2; exit 2; }
