#!/bin/sh
# A stand-in for an application's image in orch's import tests (busybox sh). The image's
# config sets STANDIN to the application it stands in for; the manifests run unchanged. It
# listens on the ports the application's manifests declare and answers GET / with who it is
# (`standin ROLE HOSTNAME`) and whether it reaches each peer the real application talks to,
# by the names and ports the manifests give it (one `peer HOST:PORT PROTO ok|failed: ...`
# line each: a real redis must answer PING, another stand-in its first line), plus lines of
# its own role. Called as `pg_isready` it is postgres' readiness check; `standin report`
# prints the report (for a stand-in without ports, through `orchctl exec`).
set -u
role=${STANDIN:?STANDIN names the application this image stands in for}
state=/tmp/standin

# redis HOST PORT ARG...: one command in redis' protocol; prints the first reply (+OK → OK,
# :3 → 3, $N → the string, $-1 → (nil), -ERR ... as it is); fails when nothing answers.
redis() {
	host=$1 port=$2
	shift 2
	req="*$#\r\n"
	for a in "$@"; do req="$req\$${#a}\r\n$a\r\n"; done
	req="$req*1\r\n\$4\r\nQUIT\r\n"
	out=$(printf '%b' "$req" | timeout 3 nc -w 2 "$host" "$port" 2>/dev/null | tr -d '\r')
	[ -n "$out" ] || return 1
	first=$(printf '%s\n' "$out" | head -n 1)
	case $first in
	'$-1') echo '(nil)' ;;
	'$'*) printf '%s\n' "$out" | sed -n 2p ;;
	[+:]*) echo "${first#?}" ;;
	*) echo "$first" ;;
	esac
}

# get URL: the body's first line, or fails.
get() {
	timeout 4 wget -q -O - "$1" 2>/dev/null | head -n 1 | grep .
}

# peer HOST:PORT/PROTO: one line saying whether the peer answers.
peer() {
	hp=${1%/*} proto=${1##*/}
	case $proto in
	redis) a=$(redis "${hp%:*}" "${hp##*:}" PING) && [ "$a" = PONG ] ;;
	http) a=$(get "http://$hp/") ;;
	esac
	if [ $? = 0 ]; then echo "peer $hp $proto ok: $a"; else echo "peer $hp $proto failed: ${a:-no answer}"; fi
}

# The ports this role listens on, the peers it talks to (HOST:PORT/PROTO), as the real
# application does with the manifests' settings.
ports= peers=
case $role in
gb-frontend) # guestbook: php-redis, GET_HOSTS_FROM=dns
	ports=80 peers="redis-master:6379/redis redis-replica:6379/redis" ;;
vote) ports=80 peers="redis:6379/redis" ;;
worker) peers="redis:6379/redis db:5432/http" ;;
result) ports=80 peers="db:5432/http" ;;
postgres) ports=5432 ;;
mariadb) ports="3306 33060" ;;
wordpress) # WORDPRESS_DB_HOST is host[:port], default port 3306
	db=${WORDPRESS_DB_HOST:-mysql}
	case $db in *:*) ;; *) db=$db:3306 ;; esac
	ports=80 peers="$db/http" ;;
flask-web) ports=8000 peers="redis:6379/redis" ;;
go-backend) ports=8000 peers="db:5432/http" ;;
nginx) # proxy_pass targets of its configuration (a bind mount in the Compose app)
	ports=80
	for t in $(sed -n 's|.*proxy_pass *http://\([^;/ ]*\).*|\1|p' /etc/nginx/conf.d/*.conf 2>/dev/null); do
		case $t in *:*) ;; *) t=$t:80 ;; esac
		peers="$peers $t/http"
	done ;;
*) echo "standin: unknown STANDIN=$role" >&2; exit 2 ;;
esac

# The value of query parameter $1 of QUERY_STRING, URL-decoded.
param() {
	v=$(printf '%s\n' "${QUERY_STRING:-}" | tr '&' '\n' | sed -n "s/^$1=//p" | head -n 1)
	[ -n "$v" ] && httpd -d "$v"
}

# What this role adds to the report (and does for a query).
extra() {
	case $role in
	gb-frontend) # guestbook.php?cmd=set&key=K&value=V writes to the leader, cmd=get reads a replica
		case $(param cmd) in
		set) echo "{\"message\": \"$(redis redis-master 6379 SET "$(param key)" "$(param value)")\"}" ;;
		get) echo "{\"data\": \"$(redis redis-replica 6379 GET "$(param key)")\"}" ;;
		esac ;;
	vote) v=$(param vote) && echo "queued $v: $(redis redis 6379 RPUSH votes "$v")" ;;
	worker) echo "moved: $(cat $state/moved 2>/dev/null || echo 0)" ;;
	result) echo "result: $(timeout 4 wget -q -O - http://db:5432/ 2>/dev/null | grep '^votes')" ;;
	postgres)
		v=$(param store) && echo "$v" >>$state/votes
		echo "votes a=$(grep -cx a $state/votes 2>/dev/null) b=$(grep -cx b $state/votes 2>/dev/null)"
		f=${POSTGRES_PASSWORD_FILE:-}
		[ -n "$f" ] && echo "password file $f: $(wc -c <"$f" 2>/dev/null || echo unreadable) bytes"
		echo "user $(id -un)" ;;
	flask-web) echo "Hello World! I have been seen $(redis redis 6379 INCR hits) times." ;;
	go-backend) echo "secret db-password: $(wc -c </run/secrets/db-password 2>/dev/null || echo unreadable) bytes" ;;
	esac
}

report() {
	echo "standin $role $(hostname)"
	for p in $peers; do peer "$p"; done
	extra
}

case ${0##*/} in
pg_isready) # ready STANDIN_READY_AFTER seconds after the start; the first success is noted
	[ "$(($(date +%s) - $(cat $state/started)))" -ge "${STANDIN_READY_AFTER:-0}" ] || exit 1
	[ -f $state/ready-since ] || date +%s >$state/ready-since
	exit 0 ;;
esac
case ${1:-} in
report) report; exit 0 ;;
cgi) printf 'Content-Type: text/plain\r\n\r\n'; report; exit 0 ;;
esac

# The server: an httpd per port answering every path with the report.
mkdir -p $state/www/cgi-bin
date +%s >$state/started
: >>$state/votes
printf '#!/bin/sh\nexec /bin/standin cgi\n' >$state/www/cgi-bin/index.cgi
cp $state/www/cgi-bin/index.cgi $state/www/guestbook.php
chmod +x $state/www/cgi-bin/index.cgi $state/www/guestbook.php
echo '*.php:/bin/sh' >$state/httpd.conf
pids=
trap 'kill $pids 2>/dev/null; exit 0' TERM INT
for p in $ports; do
	httpd -f -p "$p" -h $state/www -c $state/httpd.conf &
	pids="$pids $!"
done
echo "standin $role listening on ${ports:-nothing}, peers:${peers:- none}"
if [ "$role" = worker ]; then
	# The voting app's worker: votes from redis' list into the database.
	n=0
	while :; do
		v=$(redis redis 6379 LPOP votes)
		if [ -n "$v" ] && [ "$v" != "(nil)" ] && get "http://db:5432/?store=$v" >/dev/null; then
			n=$((n + 1))
			echo $n >$state/moved
		else
			sleep 0.3 &
			wait $!
		fi
	done
fi
while :; do
	sleep 3600 &
	wait $!
done
