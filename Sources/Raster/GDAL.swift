import CGDAL
import Foundation

/// An error from GDAL, OGR, PROJ or a codec, with the library's own message.
public struct RasterError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }

    /// The last message GDAL recorded on this thread, prefixed by what we were doing.
    static func gdal(_ doing: String) -> RasterError {
        let msg = CPLGetLastErrorMsg().map { String(cString: $0) } ?? ""
        CPLErrorReset()
        return RasterError(msg.isEmpty ? doing : "\(doing): \(msg)")
    }
}

/// Process-wide GDAL set-up: drivers, a bounded block cache, quiet errors (we report them ourselves).
public enum GDAL {
    private static let once: Void = {
        GDALAllRegister()
        CPLSetErrorHandler(CPLQuietErrorHandler)
        CPLSetConfigOption("GDAL_PAM_ENABLED", "NO")
        // Masks inside the GeoTIFF, never a side-car .msk file (extracts are renamed into place).
        CPLSetConfigOption("GDAL_TIFF_INTERNAL_MASK", "YES")
        CPLSetConfigOption("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
        CPLSetConfigOption("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", ".tif,.jp2")
        // PROJ: WGS84 axis order as longitude, latitude everywhere we build a CRS.
        CPLSetConfigOption("OSR_DEFAULT_AXIS_MAPPING_STRATEGY", "TRADITIONAL_GIS_ORDER")
        GDALSetCacheMax64(256 << 20)
    }()

    /// Registers the drivers once; every wrapper calls it, so callers never need to.
    public static func initialize() { once }

    /// Sets GDAL's block cache size: it counts in resident memory, so the tiler bounds it.
    public static func setCacheMax(bytes: Int) {
        initialize()
        GDALSetCacheMax64(GIntBig(bytes))
    }

    /// Sets a GDAL configuration option for the whole process.
    public static func setConfig(_ key: String, _ value: String?) {
        initialize()
        CPLSetConfigOption(key, value)
    }

    /// The GDAL release, e.g. "3.6.2".
    public static var version: String {
        initialize()
        return String(cString: GDALVersionInfo("RELEASE_NAME"))
    }
}

/// A NULL-terminated C string list built from Swift strings, freed on deinit.
final class CStringList {
    private(set) var pointer: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?

    init(_ strings: [String]) {
        var list: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = nil
        for s in strings { list = CSLAddString(list, s) }
        pointer = list
    }

    deinit { CSLDestroy(pointer) }
}
