import CGDAL
import Foundation
import GeoGrid

/// An affine georeferencing: pixel (col, row) → ground (x, y), GDAL's six coefficients.
public struct GeoTransform: Sendable, Hashable, Codable {
    public var originX: Double
    public var pixelWidth: Double
    public var rotationX: Double
    public var originY: Double
    public var rotationY: Double
    public var pixelHeight: Double

    public init(_ c: [Double]) {
        originX = c[0]
        pixelWidth = c[1]
        rotationX = c[2]
        originY = c[3]
        rotationY = c[4]
        pixelHeight = c[5]
    }

    /// A north-up transform from the top-left corner and a square pixel size.
    public init(originX: Double, originY: Double, resolution: Double) {
        self.init([originX, resolution, 0, originY, 0, -resolution])
    }

    public var coefficients: [Double] { [originX, pixelWidth, rotationX, originY, rotationY, pixelHeight] }
    public var isNorthUp: Bool { rotationX == 0 && rotationY == 0 && pixelWidth > 0 && pixelHeight < 0 }

    /// The ground rectangle of a `width`×`height` image (north-up transforms).
    public func bounds(width: Int, height: Int) -> BoundingBox {
        let x1 = originX + Double(width) * pixelWidth
        let y1 = originY + Double(height) * pixelHeight
        return BoundingBox(
            minX: min(originX, x1), minY: min(originY, y1), maxX: max(originX, x1), maxY: max(originY, y1))
    }
}

/// A GDAL dataset. Owns its handle: closed on deinit, or by `close()` which reports write errors.
/// GDAL handles are not thread-safe: use one per task.
public final class Dataset {
    private(set) var handle: GDALDatasetH?
    /// The path or connection string it was opened from.
    public let path: String

    init(handle: GDALDatasetH, path: String) {
        self.handle = handle
        self.path = path
    }

    /// Opens a raster read-only. `path` may also be a VRT XML document.
    public static func open(_ path: String) throws -> Dataset {
        GDAL.initialize()
        CPLErrorReset()
        guard let h = GDALOpenEx(path, UInt32(GDAL_OF_RASTER | GDAL_OF_READONLY | GDAL_OF_VERBOSE_ERROR), nil, nil, nil)
        else {
            throw RasterError.gdal("cannot open \(path.hasPrefix("<") ? "VRT" : path)")
        }
        return Dataset(handle: h, path: path)
    }

    /// An in-memory dataset of `bands` byte bands.
    public static func memory(width: Int, height: Int, bands: Int) throws -> Dataset {
        GDAL.initialize()
        guard let driver = GDALGetDriverByName("MEM"),
            let h = GDALCreate(driver, "", Int32(width), Int32(height), Int32(bands), GDT_Byte, nil)
        else { throw RasterError.gdal("cannot create an in-memory raster") }
        return Dataset(handle: h, path: "MEM")
    }

    /// A GDAL dataset over caller-owned pixel-interleaved RGBA bytes (no copy). The memory must
    /// outlive the dataset.
    public static func wrapping(
        rgba: UnsafeMutablePointer<UInt8>, width: Int, height: Int, bands: Int = 4, lineStride: Int? = nil
    ) throws -> Dataset {
        GDAL.initialize()
        let addr = UInt(bitPattern: rgba)
        let spec =
            "MEM:::DATAPOINTER=0x\(String(addr, radix: 16)),PIXELS=\(width),LINES=\(height),BANDS=\(bands),"
            + "DATATYPE=Byte,PIXELOFFSET=\(bands),LINEOFFSET=\(lineStride ?? width * bands),BANDOFFSET=1"
        guard let h = GDALOpen(spec, GA_Update) else { throw RasterError.gdal("cannot wrap a pixel buffer") }
        return Dataset(handle: h, path: "MEM")
    }

    deinit { if let handle { GDALClose(handle) } }

    /// Closes now and reports a failure to flush (a full disk, a failed encoder).
    public func close() throws {
        guard let h = handle else { return }
        handle = nil
        CPLErrorReset()
        GDALClose(h)
        if CPLGetLastErrorType() == CE_Failure || CPLGetLastErrorType() == CE_Fatal {
            throw RasterError.gdal("cannot write \(path)")
        }
    }

    var h: GDALDatasetH { handle! }

    public var width: Int { Int(GDALGetRasterXSize(h)) }
    public var height: Int { Int(GDALGetRasterYSize(h)) }
    public var bandCount: Int { Int(GDALGetRasterCount(h)) }
    public var driverName: String {
        GDALGetDatasetDriver(h).flatMap { GDALGetDriverShortName($0) }.map { String(cString: $0) } ?? "?"
    }

    /// The georeferencing, or nil when the raster has none.
    public var geoTransform: GeoTransform? {
        get {
            var c = [Double](repeating: 0, count: 6)
            guard GDALGetGeoTransform(h, &c) == CE_None else { return nil }
            if c == [0, 1, 0, 0, 0, 1] { return nil }
            return GeoTransform(c)
        }
        set {
            guard var c = newValue?.coefficients else { return }
            _ = GDALSetGeoTransform(h, &c)
        }
    }

    /// The CRS as WKT ("" when none).
    public var projectionWKT: String {
        get { GDALGetProjectionRef(h).map { String(cString: $0) } ?? "" }
        set { _ = GDALSetProjection(h, newValue) }
    }

    /// The CRS, or nil when the raster has none.
    public var spatialReference: SpatialReference? {
        let wkt = projectionWKT
        return wkt.isEmpty ? nil : try? SpatialReference(wkt)
    }

    /// Number of overviews of band 1.
    public var overviewCount: Int {
        guard let b = GDALGetRasterBand(h, 1) else { return 0 }
        return Int(GDALGetOverviewCount(b))
    }

    /// Colour interpretation of each band, e.g. ["Red", "Green", "Blue"].
    public var colorInterpretations: [String] {
        (0..<bandCount).map { i in
            guard let b = GDALGetRasterBand(h, Int32(i + 1)) else { return "?" }
            return String(cString: GDALGetColorInterpretationName(GDALGetRasterColorInterpretation(b)))
        }
    }

    /// The data type of band 1, e.g. "Byte".
    public var dataTypeName: String {
        guard let b = GDALGetRasterBand(h, 1) else { return "?" }
        return String(cString: GDALGetDataTypeName(GDALGetRasterDataType(b)))
    }

    /// A metadata item, e.g. ("BLOCK_OFFSET_0_0", "TIFF") or ("COMPRESSION", "IMAGE_STRUCTURE").
    public func metadataItem(_ key: String, domain: String? = nil, band: Int? = nil) -> String? {
        let obj: UnsafeMutableRawPointer? = band.map { GDALGetRasterBand(h, Int32($0)) } ?? h
        return GDALGetMetadataItem(obj, key, domain).map { String(cString: $0) }
    }

    /// Sets a dataset metadata item (the default domain): GeoTIFF keeps it in GDAL's tag.
    public func setMetadataItem(_ key: String, _ value: String) {
        GDALSetMetadataItem(h, key, value, nil)
    }

    /// True when GDAL says every pixel of `band` is valid: no alpha, no nodata, no mask (its mask
    /// then reads 255 everywhere, so a reader can write 255 instead of reading it).
    public func maskIsAllValid(band: Int) -> Bool {
        guard let b = GDALGetRasterBand(h, Int32(band)) else { return false }
        return GDALGetMaskFlags(b) & GMF_ALL_VALID != 0
    }

    /// Reads a window of the mask of `band` (0 = no data, 255 = data, GDAL's convention) into a
    /// byte buffer of the same size, `pixelSpace` and `lineSpace` bytes apart: the alpha bytes of
    /// an RGBA buffer, for instance.
    public func readMask(
        band: Int, x: Int, y: Int, width: Int, height: Int, into buffer: UnsafeMutablePointer<UInt8>,
        pixelSpace: Int, lineSpace: Int
    ) throws {
        guard let b = GDALGetRasterBand(h, Int32(band)), let mask = GDALGetMaskBand(b) else {
            throw RasterError("no band \(band) in \(path)")
        }
        CPLErrorReset()
        let err = GDALRasterIO(
            mask, GF_Read, Int32(x), Int32(y), Int32(width), Int32(height), buffer, Int32(width), Int32(height),
            GDT_Byte, Int32(pixelSpace), Int32(lineSpace))
        if err != CE_None { throw RasterError.gdal("cannot read the mask of \(path) at (\(x), \(y))") }
    }

    /// Block size of band 1.
    public var blockSize: (width: Int, height: Int) {
        var bx: Int32 = 0
        var by: Int32 = 0
        if let b = GDALGetRasterBand(h, 1) { GDALGetBlockSize(b, &bx, &by) }
        return (Int(bx), Int(by))
    }

    /// Reads a window into a pixel-interleaved byte buffer of `bufferWidth`×`bufferHeight`
    /// pixels and `bands.count` bytes per pixel. A window larger than the buffer is averaged
    /// (`resampling`), using overviews when the source has them.
    public func read(
        x: Int, y: Int, width: Int, height: Int, bands: [Int],
        into buffer: UnsafeMutablePointer<UInt8>, bufferWidth: Int, bufferHeight: Int,
        pixelSpace: Int? = nil, lineSpace: Int? = nil, resampling: Resampling = .nearest
    ) throws {
        var map = bands.map { Int32($0) }
        let ps = pixelSpace ?? bands.count
        let ls = lineSpace ?? ps * bufferWidth
        var extra = GDALRasterIOExtraArg()
        extra.nVersion = 1
        extra.eResampleAlg = resampling.rasterIO
        extra.pfnProgress = nil
        extra.pProgressData = nil
        extra.bFloatingPointWindowValidity = 0
        CPLErrorReset()
        let err = GDALDatasetRasterIOEx(
            h, GF_Read, Int32(x), Int32(y), Int32(width), Int32(height), buffer,
            Int32(bufferWidth), Int32(bufferHeight), GDT_Byte, Int32(map.count), &map,
            GSpacing(ps), GSpacing(ls), 1, &extra)
        if err != CE_None { throw RasterError.gdal("cannot read \(width)×\(height) pixels at (\(x), \(y))") }
    }

    /// Writes a pixel-interleaved byte buffer into a window of the dataset.
    public func write(
        x: Int, y: Int, width: Int, height: Int, bands: [Int], from buffer: UnsafeMutablePointer<UInt8>,
        pixelSpace: Int? = nil, lineSpace: Int? = nil
    ) throws {
        var map = bands.map { Int32($0) }
        let ps = pixelSpace ?? bands.count
        let ls = lineSpace ?? ps * width
        let err = GDALDatasetRasterIO(
            h, GF_Write, Int32(x), Int32(y), Int32(width), Int32(height), buffer, Int32(width), Int32(height),
            GDT_Byte, Int32(map.count), &map, Int32(ps), Int32(ls), 1)
        if err != CE_None { throw RasterError.gdal("cannot write pixels") }
    }

    /// Sets a band's colour interpretation ("Alpha" makes band 4 an alpha band for GDAL).
    public func setColorInterpretation(band: Int, _ name: String) {
        guard let b = GDALGetRasterBand(h, Int32(band)) else { return }
        _ = GDALSetRasterColorInterpretation(b, GDALGetColorInterpretationByName(name))
    }

    /// Copies this dataset into a file with `driver` and its creation options.
    @discardableResult
    public func translate(to path: String, arguments: [String]) throws -> Dataset {
        let args = CStringList(arguments)
        guard let opts = GDALTranslateOptionsNew(args.pointer, nil) else {
            throw RasterError.gdal("bad translate options \(arguments)")
        }
        defer { GDALTranslateOptionsFree(opts) }
        var usage: Int32 = 0
        CPLErrorReset()
        guard let out = GDALTranslate(path, h, opts, &usage) else { throw RasterError.gdal("cannot write \(path)") }
        return Dataset(handle: out, path: path)
    }
}

/// How pixels are interpolated when a read or a warp changes resolution.
public enum Resampling: String, Sendable, Codable, CaseIterable {
    case nearest, bilinear, cubic, average, lanczos

    var rasterIO: GDALRIOResampleAlg {
        switch self {
        case .nearest: GRIORA_NearestNeighbour
        case .bilinear: GRIORA_Bilinear
        case .cubic: GRIORA_Cubic
        case .average: GRIORA_Average
        case .lanczos: GRIORA_Lanczos
        }
    }

    /// The name gdalwarp's `-r` takes.
    public var warpName: String {
        switch self {
        case .nearest: "near"
        default: rawValue
        }
    }
}
