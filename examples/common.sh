# Shared by the recipe scripts (sourced, not run): option parsing in the style of Kaldi's
# utils/parse_options.sh, stage gates, and the criterion options of train.sh. Every script declares its options as shell variables with defaults,
# then calls `parse_options "$@"`: `--some-name VALUE` sets `some_name`; an unknown option or a
# missing value stops the script with a message.

parse_options() {
  while [ $# -gt 0 ]; do
    local __opt=${1#--}
    __opt=${__opt//-/_}
    if [[ $1 != --* || $# -lt 2 ]] || ! declare -p "$__opt" >/dev/null 2>&1; then
      echo "$0: unknown option or missing value: $1 (see the usage block)" >&2
      exit 2
    fi
    printf -v "$__opt" '%s' "$2"
    shift 2
  done
}

# run_stage N "description" command...: run the command when stage <= N <= stop_stage, unless
# MARKS/.stageN.done says it ran before; write that marker when it succeeds. MARKS is $stage_dir
# when set (`stage_dir=$lm run_stage ...`), else $data. Uses the script's $stage, $stop_stage and log().
run_stage() {
  local n=$1 what=$2 marks=${stage_dir:-$data}; shift 2
  if [ "$stage" -le "$n" ] && [ "$stop_stage" -ge "$n" ]; then
    if [ -f "$marks/.stage$n.done" ]; then log "stage $n ($what): done before, skipped"; return; fi
    log "stage $n: $what"
    "$@"
    touch "$marks/.stage$n.done"
  fi
}

# add_criterion_args CRITERION ACD_WEIGHT LRD_WEIGHT: append the loss options to criterion_args:
# `cif` (CE + quantity + CTC, no teacher) or `cif_hkd` (+ ACD + LRD, teacher states required).
add_criterion_args() {
  case $1 in
    cif) criterion_args+=(--criterion cif --load-teacher no) ;;
    cif_hkd) criterion_args+=(--criterion cif_hkd --acd-weight "$2" --lrd-weight "$3" --load-teacher yes) ;;
    *) echo "$0: --criterion must be cif or cif_hkd, not $1" >&2; exit 2 ;;
  esac
}
