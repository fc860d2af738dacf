#!/usr/bin/env bash
# Makes a throw-away CA and a server certificate it signed, for the TLS checks of
# .ci/run and bench/compare.sh (minimq's --tls-cert and RabbitMQ's ssl_options):
#   tests/interop/make_certs.sh DIR
# writes DIR/ca.pem, DIR/server.pem (for localhost and 127.0.0.1), DIR/server.key, and
# DIR/other-ca.pem, a second CA that signed nothing (for "not trusted" checks).
# Version 3 certificates with subjectAltName: rustls accepts no others.
set -euo pipefail
dir="$1"
mkdir -p "$dir"
cd "$dir"
ca() {
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$1" \
        -keyout "$2.key" -out "$2.pem" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
ca "minimq test CA" ca
ca "minimq other CA" other-ca
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout server.key -out server.csr 2>/dev/null
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
# RabbitMQ's node may run as another user than the one who made the files.
chmod 644 ./*.pem server.key
