# Settings shared by Makefile.selfsigned.mk and Makefile.k8s.mk.
#
# Every variable below can be overridden on the make command line
# (make ROOTCA_ORG=Acme root-ca) or from the environment (ROOTCA_ORG=Acme make ...).

#------------------------------------------------------------------------
# Root CA
ROOTCA_DAYS ?= 3650
ROOTCA_KEYSZ ?= 4096
ROOTCA_ORG ?= Istio
ROOTCA_CN ?= Root CA
KUBECONFIG ?= $(HOME)/.kube/config
ISTIO_NAMESPACE ?= istio-system

#------------------------------------------------------------------------
# Intermediate CA (one per cluster, written under <name>/)
INTERMEDIATE_DAYS ?= 3650
INTERMEDIATE_KEYSZ ?= 4096
INTERMEDIATE_ORG ?= Istio
INTERMEDIATE_CN ?= Intermediate CA
INTERMEDIATE_SAN_DNS ?= istiod.istio-system.svc

#------------------------------------------------------------------------
# Workload certificates (e.g. for a virtual machine)
WORKLOAD_DAYS ?= 1
SERVICE_ACCOUNT ?= default
WORKLOAD_CN ?= Workload

#------------------------------------------------------------------------
# Files in the working directory that `clean` removes (per-cluster folders are left alone).
FILES_TO_CLEAN += k8s-root-cert.pem k8s-root-cert.srl k8s-root-key.pem \
                  root-ca.conf root-cert.csr root-cert.pem root-cert.srl root-key.pem

.PHONY: clean
##clean:		remove the root CA files and the intermediate files generated in the working directory.
clean:
	@rm -f $(FILES_TO_CLEAN)

#------------------------------------------------------------------------
# openssl request configurations. Each is written once and then kept.

# $(call req-header,<key size>)
define req-header
	'[ req ]' \
	'encrypt_key = no' \
	'prompt = no' \
	'utf8 = yes' \
	'default_md = sha256' \
	'default_bits = $(1)' \
	'req_extensions = req_ext' \
	'x509_extensions = req_ext' \
	'distinguished_name = req_dn' \
	'[ req_ext ]' \
	'subjectKeyIdentifier = hash'
endef

root-ca.conf:
	@printf '%s\n' $(call req-header,$(ROOTCA_KEYSZ)) \
		'basicConstraints = critical, CA:true' \
		'keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign' \
		'[ req_dn ]' \
		'O = $(ROOTCA_ORG)' \
		'CN = $(ROOTCA_CN)' > $@

%/intermediate.conf:
	@mkdir -p $(@D)
	@printf '%s\n' $(call req-header,$(INTERMEDIATE_KEYSZ)) \
		'basicConstraints = critical, CA:true, pathlen:0' \
		'keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign' \
		'subjectAltName = @san' \
		'[ san ]' \
		'DNS.1 = $(INTERMEDIATE_SAN_DNS)' \
		'[ req_dn ]' \
		'O = $(INTERMEDIATE_ORG)' \
		'CN = $(INTERMEDIATE_CN)' \
		'L = $*' > $@

%/workload.conf:
	@mkdir -p $(@D)
	@printf '%s\n' $(call req-header,$(INTERMEDIATE_KEYSZ)) \
		'basicConstraints = critical, CA:false' \
		'keyUsage = digitalSignature, keyEncipherment' \
		'extendedKeyUsage = serverAuth, clientAuth' \
		'subjectAltName = @san' \
		'[ san ]' \
		'URI.1 = spiffe://cluster.local/ns/$*/sa/$(SERVICE_ACCOUNT)' \
		'[ req_dn ]' \
		'O = $(INTERMEDIATE_ORG)' \
		'CN = $(WORKLOAD_CN)' \
		'L = $*' > $@
