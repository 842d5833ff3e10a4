# Certificates for a multi-cluster mesh signed by a self-signed root CA.
#
# Run it from the folder that should hold the certificates, for example:
#   make -f istio-<version>/tools/certs/Makefile.selfsigned.mk root-ca
#   make -f istio-<version>/tools/certs/Makefile.selfsigned.mk cluster1-cacerts
# Files that already exist are kept: delete them (or run `clean`) to regenerate.
# Every key is 4096 bits whatever ROOTCA_KEYSZ / INTERMEDIATE_KEYSZ say, as in Istio 1.30.3's tools/certs
# (the sizes only reach the req configs' default_bits).

.SUFFIXES: .csr .pem .conf
.PRECIOUS: %/ca-key.pem %/ca-cert.pem %/cert-chain.pem
.PRECIOUS: %/workload-cert.pem %/key.pem %/workload-cert-chain.pem
.SECONDARY: root-cert.csr root-ca.conf

.DEFAULT_GOAL := help

CERTS_MK_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
include $(CERTS_MK_DIR)common.mk

#------------------------------------------------------------------------
.PHONY: help
##help:		print this help message
help:
	@grep -h '^##' $(MAKEFILE_LIST) | sed -e 's/^##//'

#------------------------------------------------------------------------
.PHONY: root-ca
##root-ca:	generate root CA files (key and certificate) in current directory.
root-ca: root-key.pem root-cert.pem

root-key.pem:
	@echo "generating $@"
	@openssl genrsa -out $@ 4096

root-cert.csr: root-key.pem root-ca.conf
	@echo "generating $@"
	@openssl req -sha256 -new -key root-key.pem -config root-ca.conf -out $@

root-cert.pem: root-cert.csr root-key.pem
	@echo "generating $@"
	@openssl x509 -req -sha256 -days $(ROOTCA_DAYS) -signkey root-key.pem \
		-extensions req_ext -extfile root-ca.conf -in root-cert.csr -out $@

#------------------------------------------------------------------------
.PHONY: %-cacerts
##<name>-cacerts: generate self signed intermediate certificates for <name> and store them under <name> directory.
%-cacerts: %/cert-chain.pem
	@echo "done"

%/ca-key.pem:
	@echo "generating $@"
	@mkdir -p $(@D)
	@openssl genrsa -out $@ 4096

%/cluster-ca.csr: %/ca-key.pem %/intermediate.conf
	@echo "generating $@"
	@openssl req -sha256 -new -config $*/intermediate.conf -key $*/ca-key.pem -out $@

%/ca-cert.pem: %/cluster-ca.csr root-key.pem root-cert.pem
	@echo "generating $@"
	@openssl x509 -req -sha256 -days $(INTERMEDIATE_DAYS) \
		-CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
		-extensions req_ext -extfile $*/intermediate.conf \
		-in $*/cluster-ca.csr -out $@

%/cert-chain.pem: %/ca-cert.pem root-cert.pem
	@echo "generating $@"
	@cat $*/ca-cert.pem root-cert.pem > $@
	@echo "Intermediate inputs stored in $(@D)/"
	@cp root-cert.pem $(@D)/

#------------------------------------------------------------------------
.PHONY: %-certs
##<namespace>-certs: generate an intermediate CA and a workload certificate for a virtual machine in namespace <namespace> using serviceAccount $SERVICE_ACCOUNT, signed by the self signed root.
%-certs: %/ca-cert.pem %/workload-cert-chain.pem root-cert.pem
	@echo "done"

%/key.pem:
	@echo "generating $@"
	@mkdir -p $(@D)
	@openssl genrsa -out $@ 4096

%/workload.csr: %/key.pem %/workload.conf
	@echo "generating $@"
	@openssl req -sha256 -new -config $*/workload.conf -key $*/key.pem -out $@

%/workload-cert.pem: %/workload.csr
	@echo "generating $@"
	@openssl x509 -sha256 -req -days $(WORKLOAD_DAYS) \
		-CA $*/ca-cert.pem -CAkey $*/ca-key.pem -CAcreateserial \
		-extensions req_ext -extfile $*/workload.conf \
		-in $*/workload.csr -out $@

%/workload-cert-chain.pem: %/workload-cert.pem %/ca-cert.pem root-cert.pem
	@echo "generating $@"
	@cat $*/workload-cert.pem $*/ca-cert.pem root-cert.pem > $@
	@echo "Intermediate and workload certs stored in $(@D)/"
	@cp root-cert.pem $(@D)/root-cert.pem
