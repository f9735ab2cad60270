// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Dallage",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "dallage", targets: ["dallage"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        // System-library shims: a modulemap and one header each, nothing else.
        .systemLibrary(name: "CGDAL", pkgConfig: "gdal", providers: [.apt(["libgdal-dev"])]),
        .systemLibrary(name: "CTurboJPEG", pkgConfig: "libturbojpeg", providers: [.apt(["libturbojpeg0-dev"])]),
        .systemLibrary(name: "CWebP", pkgConfig: "libwebp", providers: [.apt(["libwebp-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // Pure grid math: no I/O, no C.
        .target(name: "GeoGrid"),
        // Safe wrappers over GDAL/OGR/OSR and the image codecs.
        .target(
            name: "Raster",
            dependencies: ["CGDAL", "CTurboJPEG", "CWebP", "CZlib", "GeoGrid"]
        ),
        // The store format: pyramid.json, COG shard writer and reader, and the stores behind one
        // protocol: a local folder, an S3-compatible bucket (through the S3 target).
        .target(
            name: "Pyramid",
            dependencies: [
                "GeoGrid", "Raster", "S3",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Talking S3: SigV4 signing (pure), the AWS environment, and a client for any S3-compatible
        // endpoint (ranged GET, PUT, multipart upload, list, delete) with typed errors and retries.
        .target(
            name: "S3",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // Source index, plan, per-shard pipeline, resume, progress.
        .target(
            name: "Tiler",
            dependencies: [
                "Pyramid", "Raster", "GeoGrid", "Yams", "S3",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Projects, statuses, territories, tiled progress and publication: SQLite through GRDB. What
        // is tiled comes through its `TiledFootprints` protocol, not from the pyramids themselves.
        .target(
            name: "Coverage",
            dependencies: [
                "Raster", "GeoGrid",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),
        // Reads a region of a pyramid at any CRS and resolution: WMS GetMap and extracts.
        .target(name: "Render", dependencies: ["Pyramid", "Raster", "GeoGrid"]),
        // The transport-free serving core: catalog, the tile chain (stored → gated → transcoded →
        // empty), publication gate, caches, extracts, error kinds. No Hummingbird, no HTTP types.
        .target(
            name: "Serving",
            dependencies: [
                "Pyramid", "Raster", "GeoGrid", "Coverage", "Render", "S3",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The HTTP service: WMTS, XYZ, TileJSON, OGC API Tiles, caches, metrics.
        .target(
            name: "Server",
            dependencies: [
                "Pyramid", "Raster", "GeoGrid", "Coverage", "Render", "Serving", "S3", "Yams",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            resources: [.copy("Web")]
        ),
        .executableTarget(
            name: "dallage",
            dependencies: [
                "Tiler", "Pyramid", "Raster", "GeoGrid", "Server", "Serving", "Coverage", "Render", "S3",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // libFuzzer harness over the request framer, tile paths, WMS/WMTS queries and extract requests
        // (`make fuzz` builds it with -sanitize=fuzzer); built plainly, it replays saved inputs.
        .executableTarget(
            name: "DallageFuzz",
            dependencies: [
                "Server", "Serving", "Pyramid", "Coverage", "Render", "Raster", "GeoGrid", "Tiler",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),

        // What several test suites share: real services started for the tests (SeaweedFS,
        // PostgreSQL 15), free ports, running programs, waiting with a deadline.
        .target(
            name: "TestSupport",
            dependencies: ["S3", "Coverage", .product(name: "NIOCore", package: "swift-nio")],
            path: "Tests/TestSupport"
        ),
        .testTarget(
            name: "GeoGridTests",
            dependencies: ["GeoGrid", .product(name: "PropertyBased", package: "swift-property-based")]
        ),
        .testTarget(name: "RasterTests", dependencies: ["Raster", "TestSupport"]),
        .testTarget(name: "PyramidTests", dependencies: ["Pyramid", "Raster", "GeoGrid", "TestSupport"]),
        .testTarget(
            name: "S3Tests",
            dependencies: [
                "S3", "TestSupport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "CoverageTests",
            dependencies: [
                "Coverage", "Raster", "GeoGrid", "TestSupport", .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .testTarget(
            name: "TilerTests",
            dependencies: [
                "Tiler", "Pyramid", "Raster", "GeoGrid", "TestSupport", "S3",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "ServerTests",
            dependencies: [
                "Server", "Serving", "Tiler", "Pyramid", "Raster", "GeoGrid", "Coverage", "Render", "TestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            // The browser test's selenium script, run with python3 by the web page test.
            exclude: ["Browser"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
