#!/usr/bin/env bash
# A walk through aiovirt's REST service with curl and jq: list profiles, compose a partial
# domain, start a provisioning job, poll it until it is done, print its report, tear down.
#
# Start a server first (it binds 127.0.0.1:8080), e.g. on the test driver of a private
# libvirtd (python -c 'from aiovirt.testing.daemon import PrivateDaemon; ...', or tests' fixture):
#
#   aiovirt serve --uri 'test+unix:///default?socket=/path/to/libvirt-sock'
#
# or on the system's QEMU driver: aiovirt serve --uri qemu:///system (then give the guests
# type='kvm' below).  If the server has a token (AIOVIRT_TOKEN), export the same one here.
#
#   examples/rest_client.sh [BASE_URL]        (default http://127.0.0.1:8080)
set -euo pipefail

BASE=${1:-${AIOVIRT_URL:-http://127.0.0.1:8080}}
auth=()
if [[ -n ${AIOVIRT_TOKEN:-} ]]; then
    auth=(-H "Authorization: Bearer $AIOVIRT_TOKEN")
fi
# -f: stop on 4xx/5xx, still printing the server's {"error": ...} body
api() { curl -sS --fail-with-body "${auth[@]}" "$@"; }

echo "== the server"
api "$BASE/health" | jq -c .

echo "== profiles (name@version, priority, origin)"
api "$BASE/profiles" | jq -r '.profiles[] | "\(.id)\t\(.priority)\t\(.origin)"'

echo "== compose a partial domain with kvm-base and guest-agent"
api -X POST "$BASE/compose?profile=kvm-base&profile=guest-agent&param=memory=512" \
    -H 'Content-Type: application/xml' \
    --data-binary "<domain><name>demo</name></domain>" |
    jq -r '.explain, "--- the XML:", .xml'

echo "== start a job: 5 guests named rest-demo-1..5"
template="<domain type='test'><name>rest-demo</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
job=$(jq -n --arg t "$template" \
    '{specs: [{template: $t, count: 5, address: false, labels: {example: "rest_client"}}]}' |
    api -X POST "$BASE/jobs" -H 'Content-Type: application/json' --data-binary @- | jq -r .id)
echo "job $job"

echo "== poll it until it is no longer running"
while :; do
    # ?wait=5 returns as soon as the job finishes (or after 5 s with its progress)
    state=$(api "$BASE/jobs/$job?wait=5")
    echo "$state" | jq -c '{state, progress}'
    [[ $(echo "$state" | jq -r .state) == running ]] || break
done

echo "== its report"
echo "$state" | jq '.report | {ok, counts, guests: [.guests[] | {name, outcome, host}]}'

echo "== tear its guests down"
api -X DELETE "$BASE/jobs/$job/guests" | jq -c '{ok, counts}'
