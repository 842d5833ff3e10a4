# Certificates for a multi-cluster mesh signed by the CA Istio already uses in a cluster
# (the current context of $KUBECONFIG).
#
#   make -f istio-<version>/tools/certs/Makefile.k8s.mk fetch-root-ca
#   make -f istio-<version>/tools/certs/Makefile.k8s.mk cluster1-cacerts

.SUFFIXES: .csr .pem .conf
.PRECIOUS: %/ca-key.pem %/ca-cert.pem %/cert-chain.pem
.PRECIOUS: %/workload-cert.pem %/key.pem %/workload-cert-chain.pem

.DEFAULT_GOAL := help

CERTS_MK_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
include $(CERTS_MK_DIR)common.mk

export KUBECONFIG

# Folder named after the current context ("/" is not allowed in a folder name).
cluster = $(subst /,-,$(shell kubectl config current-context))

#------------------------------------------------------------------------
.PHONY: help
##help:		print this help message
help:
	@grep -h '^##' $(MAKEFILE_LIST) | sed -e 's/^##//'

#------------------------------------------------------------------------
.PHONY: fetch-root-ca
##fetch-root-ca:	fetch the root CA certificate and key Istio uses in the cluster of the current context.
fetch-root-ca:
	@echo "fetching root ca from k8s cluster: $(cluster)"
	@mkdir -p $(cluster)
	@secret=istio-ca-secret; \
	if ! kubectl get secret istio-ca-secret -n $(ISTIO_NAMESPACE) >/dev/null 2>&1; then secret=cacerts; fi; \
	kubectl get secret $$secret -n $(ISTIO_NAMESPACE) -o "jsonpath={.data['ca-cert\.pem']}" | base64 -d > $(cluster)/k8s-root-cert.pem; \
	kubectl get secret $$secret -n $(ISTIO_NAMESPACE) -o "jsonpath={.data['ca-key\.pem']}" | base64 -d > $(cluster)/k8s-root-key.pem

k8s-root-cert.pem:
	@cat $(cluster)/k8s-root-cert.pem > $@

k8s-root-key.pem:
	@cat $(cluster)/k8s-root-key.pem > $@

#------------------------------------------------------------------------
.PHONY: %-cacerts
##<name>-cacerts: generate intermediate certificates for <name>, signed by the cluster's root CA, under <name> directory.
%-cacerts: %/cert-chain.pem
	@echo "done"

%/ca-key.pem: fetch-root-ca
	@echo "generating $@"
	@mkdir -p $(@D)
	@openssl genrsa -out $@ 4096

%/cluster-ca.csr: %/ca-key.pem %/intermediate.conf
	@echo "generating $@"
	@openssl req -new -config $*/intermediate.conf -key $*/ca-key.pem -out $@

%/ca-cert.pem: %/cluster-ca.csr k8s-root-key.pem k8s-root-cert.pem
	@echo "generating $@"
	@openssl x509 -req -days $(INTERMEDIATE_DAYS) \
		-CA k8s-root-cert.pem -CAkey k8s-root-key.pem -CAcreateserial \
		-extensions req_ext -extfile $*/intermediate.conf \
		-in $*/cluster-ca.csr -out $@

%/cert-chain.pem: %/ca-cert.pem k8s-root-cert.pem
	@echo "generating $@"
	@cat $*/ca-cert.pem k8s-root-cert.pem > $@
	@echo "Intermediate certs stored in $(@D)/"
	@cp k8s-root-cert.pem $(@D)/root-cert.pem

#------------------------------------------------------------------------
.PHONY: %-certs
##<namespace>-certs: generate an intermediate CA and a workload certificate for a virtual machine in namespace <namespace> using serviceAccount $SERVICE_ACCOUNT, signed by the cluster's root CA.
%-certs: fetch-root-ca %/workload-cert-chain.pem k8s-root-cert.pem
	@echo "done"

%/key.pem:
	@echo "generating $@"
	@mkdir -p $(@D)
	@openssl genrsa -out $@ 4096

%/workload.csr: %/key.pem %/workload.conf
	@echo "generating $@"
	@openssl req -new -config $*/workload.conf -key $*/key.pem -out $@

%/workload-cert.pem: %/workload.csr
	@echo "generating $@"
	@openssl x509 -req -days $(WORKLOAD_DAYS) \
		-CA $*/ca-cert.pem -CAkey $*/ca-key.pem -CAcreateserial \
		-extensions req_ext -extfile $*/workload.conf \
		-in $*/workload.csr -out $@

%/workload-cert-chain.pem: k8s-root-cert.pem %/ca-cert.pem %/workload-cert.pem
	@echo "generating $@"
	@cat k8s-root-cert.pem $*/ca-cert.pem $*/workload-cert.pem > $@
	@echo "Intermediate and workload certs stored in $(@D)/"
	@cp k8s-root-cert.pem $(@D)/root-cert.pem
