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
        // The store format: pyramid.json, COG shard writer and reader.
        .target(name: "Pyramid", dependencies: ["GeoGrid", "Raster"]),
        // Source index, plan, per-shard pipeline, resume, progress.
        .target(
            name: "Tiler",
            dependencies: [
                "Pyramid", "Raster", "GeoGrid", "Yams",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "dallage",
            dependencies: [
                "Tiler", "Pyramid", "Raster", "GeoGrid",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .testTarget(name: "GeoGridTests", dependencies: ["GeoGrid"]),
        .testTarget(name: "RasterTests", dependencies: ["Raster"]),
        .testTarget(name: "PyramidTests", dependencies: ["Pyramid", "Raster", "GeoGrid"]),
        .testTarget(name: "TilerTests", dependencies: ["Tiler", "Pyramid", "Raster", "GeoGrid"]),
    ],
    swiftLanguageModes: [.v6]
)
