import CGDAL
import Foundation

extension Dataset {
    /// Creates a raster file of byte bands with a driver that supports `Create` (GTiff, MEM).
    public static func create(
        _ path: String, driver: String, width: Int, height: Int, bands: Int, options: [String] = []
    ) throws -> Dataset {
        GDAL.initialize()
        CPLErrorReset()
        let opts = CStringList(options)
        guard let d = GDALGetDriverByName(driver),
            let h = GDALCreate(d, path, Int32(width), Int32(height), Int32(bands), GDT_Byte, opts.pointer)
        else { throw RasterError.gdal("cannot create \(path)") }
        return Dataset(handle: h, path: path)
    }

    /// Adds a per-dataset mask band (GDAL's internal 1-bit mask in GeoTIFF).
    public func createMask() throws {
        CPLErrorReset()
        guard GDALCreateDatasetMaskBand(h, GMF_PER_DATASET) == CE_None else {
            throw RasterError.gdal("cannot create a mask in \(path)")
        }
    }

    /// Writes rows of the per-dataset mask (0 = no data, 255 = data).
    public func writeMask(x: Int, y: Int, width: Int, height: Int, from buffer: UnsafeMutablePointer<UInt8>) throws {
        guard let band = GDALGetRasterBand(h, 1), let mask = GDALGetMaskBand(band) else {
            throw RasterError("no mask band in \(path)")
        }
        CPLErrorReset()
        let err = GDALRasterIO(
            mask, GF_Write, Int32(x), Int32(y), Int32(width), Int32(height), buffer, Int32(width), Int32(height),
            GDT_Byte, 0, 0)
        if err != CE_None { throw RasterError.gdal("cannot write the mask of \(path)") }
    }

    /// Reads the whole mask of band 1 (255 where there is data).
    public func readMask(into buffer: UnsafeMutablePointer<UInt8>) throws {
        guard let band = GDALGetRasterBand(h, 1), let mask = GDALGetMaskBand(band) else {
            throw RasterError("no band in \(path)")
        }
        CPLErrorReset()
        let err = GDALRasterIO(
            mask, GF_Read, 0, 0, Int32(width), Int32(height), buffer, Int32(width), Int32(height), GDT_Byte, 0, 0)
        if err != CE_None { throw RasterError.gdal("cannot read the mask of \(path)") }
    }

    /// Copies this dataset with a driver that supports only `CreateCopy` (JPEG, PNG, JP2OpenJPEG).
    @discardableResult
    public func copy(to path: String, driver: String, options: [String] = []) throws -> Dataset {
        CPLErrorReset()
        let opts = CStringList(options)
        guard let d = GDALGetDriverByName(driver),
            let out = GDALCreateCopy(d, path, h, 0, opts.pointer, nil, nil)
        else { throw RasterError.gdal("cannot write \(path)") }
        return Dataset(handle: out, path: path)
    }
}
