# Sourced by the bench scripts that re-evaluate a committed adapter run on the CPU: sets the
# dataset (ds), its index language and analyzer (lang, an) and the base model preset (model)
# of a run named like bench/adapters/<run> (coliee_en_*, coliee_ja_*, jordan_*).
#   usage: source bench/run_of.sh; run_of <run> || exit 2
run_of() {
  case $1 in
    coliee_en_*) ds=coliee_statute_en; lang=en; an=en-snowball ;;
    coliee_ja_*) ds=coliee_statute_ja; lang=ja; an=ja-bigram ;;
    jordan_*) ds=jordan_law_qa_ar; lang=ar; an=ar-snowball ;;
    *) echo "unknown run $1" >&2; return 2 ;;
  esac
  case $1 in *gemma*) model=gemma3-270m ;; *minilm*) model=minilm ;; *) model=e5-small ;; esac
}
