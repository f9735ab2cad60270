# Build with the Swift toolchain and GDAL headers, run on slim Debian with the runtime libraries.
# The package lists match `make deps` (Makefile: DEB_BUILD for the build stage, runtime libraries below).
FROM swift:6.1-bookworm AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      pkg-config libsqlite3-dev libgdal-dev libtiff-dev libjpeg-dev libturbojpeg0-dev libwebp-dev libproj-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Package.swift ./
COPY Sources ./Sources
COPY Tests ./Tests
RUN swift build -c release --product dallage --static-swift-stdlib \
    && install -D .build/release/dallage /out/usr/local/bin/dallage \
    && cp -r .build/release/Dallage_Server.resources /out/usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libgdal32 libturbojpeg0 libwebp7 libjpeg62-turbo libtiff6 libproj25 zlib1g libsqlite3-0 libjs-leaflet gdal-bin ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
COPY config /usr/local/share/dallage
COPY tilesets /usr/local/share/dallage/tilesets
ENV DALLAGE_TMS_DIR=/usr/local/share/dallage/tms
VOLUME ["/data"]
WORKDIR /data
ENTRYPOINT ["dallage"]
CMD ["--help"]
