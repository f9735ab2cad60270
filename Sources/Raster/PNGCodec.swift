import CGDAL
import Foundation

/// PNG encoding through GDAL's PNG driver (in memory, no file): used for transcoded tiles only,
/// which are cached, so the driver's per-call cost does not matter.
public enum PNGCodec {
    /// Encodes RGBA pixels (`stride` bytes per row) as an RGBA PNG.
    public static func encode(rgba pixels: UnsafeMutablePointer<UInt8>, width: Int, height: Int, stride: Int) throws
        -> [UInt8]
    {
        let src = try Dataset.wrapping(rgba: pixels, width: width, height: height, lineStride: stride)
        src.setColorInterpretation(band: 4, "Alpha")
        let name = "/vsimem/dallage-\(UUID().uuidString).png"
        defer { VSIUnlink(name) }
        let out = try src.translate(to: name, arguments: ["-of", "PNG", "-co", "ZLEVEL=6"])
        try out.close()
        var length: vsi_l_offset = 0
        guard let buffer = VSIGetMemFileBuffer(name, &length, 0) else { throw RasterError("PNG encoding failed") }
        return Array(UnsafeBufferPointer(start: buffer, count: Int(length)))
    }
}
