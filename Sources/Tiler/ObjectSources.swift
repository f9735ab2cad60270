import Foundation
import Raster
import S3

/// Dalles in object storage, named `s3://bucket/key.tif` (or `s3://bucket/folder/` for every dalle
/// under it), read through GDAL's `/vsis3/` with GDAL's settings taken from the same AWS
/// environment as the store's (endpoint, addressing, credentials, CA bundle).
enum ObjectSources {
    /// The GDAL paths an `s3://` source names; nil when it is not one. A name ending with `/` is a
    /// folder: every dalle with one of `extensions` under it (one listing).
    static func expand(_ source: String, extensions: Set<String>) -> [String]? {
        guard source.hasPrefix("s3://") else { return nil }
        let path = "/vsis3/" + source.dropFirst(5)
        guard path.hasSuffix("/") else { return [path] }
        return VirtualFiles.listRecursive(path)
            .filter { extensions.contains(($0 as NSString).pathExtension.lowercased()) }
            .map { path + $0 }
    }

    /// Sets GDAL's `/vsis3/` options from the AWS variables: the credentials and region as they
    /// are, `AWS_ENDPOINT_URL` split into `AWS_S3_ENDPOINT` (host:port) and `AWS_HTTPS`, path-style
    /// addressing (`AWS_VIRTUAL_HOSTING=FALSE`) for an endpoint of one's own, `AWS_CA_BUNDLE` as
    /// `CURL_CA_BUNDLE`. Throws on an endpoint that is not a URL of a host.
    static func configureGDAL(environment: [String: String]) throws {
        func value(_ name: String) -> String? {
            guard let v = environment[name]?.trimmingCharacters(in: .whitespaces), !v.isEmpty else { return nil }
            return v
        }
        for name in [
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
        ] {
            if let v = value(name) { GDAL.setConfig(name, v) }
        }
        if value("AWS_REGION") == nil, value("AWS_DEFAULT_REGION") == nil {
            GDAL.setConfig("AWS_REGION", S3Configuration.defaultRegion)
        }
        for name in ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"] {
            guard let url = value(name) else { continue }
            let endpoint: S3Endpoint
            do {
                endpoint = try S3Endpoint(parsing: url, variable: name)
            } catch {
                throw StoreTargetError("\(error)")
            }
            GDAL.setConfig("AWS_S3_ENDPOINT", endpoint.authority)
            GDAL.setConfig("AWS_HTTPS", endpoint.secure ? "YES" : "NO")
            GDAL.setConfig("AWS_VIRTUAL_HOSTING", "FALSE")
            break
        }
        if let bundle = value("AWS_CA_BUNDLE") { GDAL.setConfig("CURL_CA_BUNDLE", bundle) }
        // An endpoint that does not answer fails a dalle (named, skipped) rather than hanging the
        // run: GDAL's curl has no timeout of its own. The S3 client's bounds, unless set already.
        if value("GDAL_HTTP_CONNECTTIMEOUT") == nil { GDAL.setConfig("GDAL_HTTP_CONNECTTIMEOUT", "5") }
        if value("GDAL_HTTP_TIMEOUT") == nil { GDAL.setConfig("GDAL_HTTP_TIMEOUT", "120") }
    }
}
