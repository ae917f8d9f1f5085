#!/usr/bin/env bash
# The layer rules of ARCHITECTURE.md, checked by `make lint`:
#
#   domain <- adapters <- app <- cli <- main, no arrow back.
#
#   * worker/src/domain/ (the functional core) does no IO, reads no clock and
#     makes no ids: it never mentions sqlx, lapin, reqwest, tokio, Utc::now,
#     Local::now, SystemTime::now, Instant::now, Uuid::new_v4, now_v7,
#     std::fs or std::net, and never uses crate::adapters, crate::app or
#     crate::cli;
#   * worker/src/adapters/ never uses crate::app or crate::cli;
#   * worker/src/app/ never uses crate::cli;
#   * no .rs file under worker/src has more than 600 lines before its
#     `#[cfg(test)]` module (the first line matching ^#\[cfg\(test\)\]).
#
# Comment lines (optional whitespace, then //, so also /// and //!) are not
# checked. `use crate::{...}` groups are checked item by item.
# Prints file:line and the broken rule for every violation and exits 1, or
# prints one OK line. Needs only bash, find and awk.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SRC=worker/src
MAX_LINES=600

# check_dir DIR RULE TOKENS MODULES
#   TOKENS:  space-separated words no file under DIR may mention
#   MODULES: space-separated crate modules no file under DIR may use
# Prints one line per violation.
check_dir() {
    local dir="$1" rule="$2" tokens="$3" modules="$4"
    [ -d "$dir" ] || return 0
    find "$dir" -type f -name '*.rs' -exec awk \
        -v rule="$rule" -v tokens="$tokens" -v modules="$modules" '
        function report(line, what) {
            printf "%s:%d: %s: %s\n", FILENAME, line, rule, what
        }
        # The top-level items of a `use crate::{...};` group, e.g.
        # "crate::{adapters::db, domain::{model, rules}}" -> adapters, domain.
        function check_group(text, line,    i, c, depth, item, start, rest) {
            start = index(text, "crate::{")
            if (start == 0) return
            rest = substr(text, start + 8)
            depth = 1; item = ""
            for (i = 1; i <= length(rest) && depth > 0; i++) {
                c = substr(rest, i, 1)
                if (c == "{") { depth++; continue }
                if (c == "}") { depth--; if (depth == 0) check_item(item, line); continue }
                if (depth == 1 && c == ",") { check_item(item, line); item = ""; continue }
                if (depth == 1) item = item c
            }
        }
        function check_item(item, line,    name, m) {
            name = item
            gsub(/^[ \t\r\n]+/, "", name)
            sub(/[^A-Za-z0-9_].*$/, "", name)
            for (m = 1; m <= nmods; m++)
                if (name == mods[m]) report(line, "uses crate::" name " (in a use crate::{...} group)")
        }
        BEGIN {
            ntok = split(tokens, toks, " ")
            nmods = split(modules, mods, " ")
            for (m = 1; m <= nmods; m++) toks[++ntok] = "crate::" mods[m]
            ident = "[A-Za-z0-9_]"
        }
        FNR == 1 { grouping = 0; group = "" }
        /^[ \t]*\/\// { next }
        {
            line = $0
            for (t = 1; t <= ntok; t++) {
                # the token as a whole word: no identifier character on either side
                re = "(^|[^A-Za-z0-9_])" toks[t] "([^A-Za-z0-9_]|$)"
                if (line ~ re) {
                    what = (toks[t] ~ /^crate::/) ? "uses " toks[t] : "mentions " toks[t]
                    report(FNR, what)
                }
            }
            if (!grouping && index(line, "crate::{") > 0) { grouping = 1; group = ""; group_line = FNR }
            if (grouping) {
                group = group " " line
                if (index(line, ";") > 0) { check_group(group, group_line); grouping = 0 }
            }
        }
    ' {} +
}

# check_size: files with more than MAX_LINES lines before the first #[cfg(test)].
check_size() {
    find "$SRC" -type f -name '*.rs' -exec awk -v max="$MAX_LINES" '
        function done_file() {
            if (file != "" && n > max)
                printf "%s:%d: size: %d lines before #[cfg(test)] (limit %d)\n", file, max + 1, n, max
        }
        FNR == 1 { done_file(); file = FILENAME; n = 0; in_tests = 0 }
        /^#\[cfg\(test\)\]/ { in_tests = 1 }
        !in_tests { n++ }
        END { done_file() }
    ' {} +
}

domain_tokens='sqlx lapin reqwest tokio Utc::now Local::now SystemTime::now Instant::now Uuid::new_v4 now_v7 std::fs std::net'

violations="$(
    check_dir "$SRC/domain" "domain is pure (no IO, clock, ids or outer layers)" "$domain_tokens" "adapters app cli"
    check_dir "$SRC/adapters" "adapters never use app or cli" "" "app cli"
    check_dir "$SRC/app" "app never uses cli" "" "cli"
    check_size
)"

files="$(find "$SRC" -type f -name '*.rs' -exec printf '.' \; | awk '{ n = length($0) } END { print n + 0 }')"
if [ -n "$violations" ]; then
    printf '%s\n' "$violations"
    count="$(printf '%s\n' "$violations" | awk 'END { print NR }')"
    echo "check-layers: FAILED, $count violation(s) in $files files under $SRC (rules: scripts/check-layers.sh, ARCHITECTURE.md)" >&2
    exit 1
fi
echo "check-layers: OK, $files files under $SRC: domain pure, adapters/app/cli layered one way, no file over $MAX_LINES lines before its tests"
