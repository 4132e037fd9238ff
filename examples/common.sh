# Shared by the recipe scripts (sourced, not run): option parsing in the style of Kaldi's
# utils/parse_options.sh. Every script declares its options as shell variables with defaults,
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
