import CGDAL
import Foundation

/// Files GDAL reads through its virtual file systems (`/vsis3/bucket/key` for object storage):
/// what `stat` and a folder listing are for local files.
public enum VirtualFiles {
    /// The size and modification time (seconds since 1970) of a file GDAL can open; nil when
    /// there is none (for `/vsis3/`, one HEAD request).
    public static func stat(_ path: String) -> (size: Int, modified: Double)? {
        GDAL.initialize()
        // GDAL fills a `struct stat64`, which Swift does not import; on 64-bit Linux it is laid
        // out as `struct stat`.
        var st = Foundation.stat()
        let found = withUnsafeMutablePointer(to: &st) { VSIStatL(path, OpaquePointer($0)) == 0 }
        guard found else { return nil }
        return (Int(st.st_size), Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9)
    }

    /// Every file under a folder, at any depth, as paths relative to it (for `/vsis3/`, a listing).
    public static func listRecursive(_ path: String) -> [String] {
        GDAL.initialize()
        guard let list = VSIReadDirRecursive(path) else { return [] }
        defer { CSLDestroy(list) }
        var out: [String] = []
        var i = 0
        while let name = list[i] {
            out.append(String(cString: name))
            i += 1
        }
        return out
    }
}
