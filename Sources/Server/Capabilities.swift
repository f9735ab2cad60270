import Foundation
import GeoGrid
import Pyramid
import Serving

/// The WMTS 1.0.0 capabilities document for every pyramid of the catalog.
enum WMTSCapabilities {
    static func document(pyramids: [ServedPyramid], baseURL: String) -> String {
        var x = """
            <?xml version="1.0" encoding="UTF-8"?>
            <Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" \
            xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
            xmlns:gml="http://www.opengis.net/gml" \
            xsi:schemaLocation="http://www.opengis.net/wmts/1.0 http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd" \
            version="1.0.0">
              <ows:ServiceIdentification>
                <ows:Title>Dallage</ows:Title>
                <ows:Abstract>Orthophotography tiles (PCRS image and orthophotos) in Lambert-93 and WebMercator.</ows:Abstract>
                <ows:ServiceType>OGC WMTS</ows:ServiceType>
                <ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>
              </ows:ServiceIdentification>
              <ows:OperationsMetadata>

            """
        for op in ["GetCapabilities", "GetTile"] {
            x += """
                    <ows:Operation name="\(op)">
                      <ows:DCP><ows:HTTP>
                        <ows:Get xlink:href="\(XML.escape(baseURL))/wmts?">
                          <ows:Constraint name="GetEncoding"><ows:AllowedValues><ows:Value>KVP</ows:Value></ows:AllowedValues></ows:Constraint>
                        </ows:Get>
                        <ows:Get xlink:href="\(XML.escape(baseURL))/wmts/1.0.0/">
                          <ows:Constraint name="GetEncoding"><ows:AllowedValues><ows:Value>RESTful</ows:Value></ows:AllowedValues></ows:Constraint>
                        </ows:Get>
                      </ows:HTTP></ows:DCP>
                    </ows:Operation>

                """
        }
        x += "  </ows:OperationsMetadata>\n  <Contents>\n"
        var sets: [String: (TileMatrixSet, ClosedRange<Int>)] = [:]
        // One layer per tileset, linked to each grid it was tiled for.
        let byTileset = Dictionary(grouping: pyramids, by: \.tileset)
        for tileset in byTileset.keys.sorted() {
            guard let group = byTileset[tileset]?.sorted(by: { $0.grid < $1.grid }), let first = group.first else {
                continue
            }
            let m = first.manifest
            let w = group.dropFirst().reduce(m.wgs84Bounds) { $0.union($1.manifest.wgs84Bounds) }
            x += """
                    <Layer>
                      <ows:Title>\(XML.escape(m.title ?? tileset))</ows:Title>
                      <ows:Abstract>\(XML.escape(m.abstract ?? ""))</ows:Abstract>
                      <ows:WGS84BoundingBox>
                        <ows:LowerCorner>\(w.minX) \(w.minY)</ows:LowerCorner>
                        <ows:UpperCorner>\(w.maxX) \(w.maxY)</ows:UpperCorner>
                      </ows:WGS84BoundingBox>
                      <ows:Identifier>\(XML.escape(tileset))</ows:Identifier>

                """
            // The data's own extent in each grid's CRS: clients (GDAL's WMTS driver) then ask only
            // for tiles inside the limits, instead of the larger reprojection of the WGS84 box.
            for p in group {
                guard let epsg = p.manifest.tileMatrixSet.epsg else { continue }
                let b = p.manifest.bounds
                x += """
                          <ows:BoundingBox crs="urn:ogc:def:crs:EPSG::\(epsg)">
                            <ows:LowerCorner>\(b.minX) \(b.minY)</ows:LowerCorner>
                            <ows:UpperCorner>\(b.maxX) \(b.maxY)</ows:UpperCorner>
                          </ows:BoundingBox>

                    """
            }
            if let a = m.attribution, !a.isEmpty {
                x += "      <ows:Metadata xlink:title=\"attribution\" xlink:href=\"\(XML.escape(a))\"/>\n"
            }
            x +=
                "      <Style isDefault=\"true\"><ows:Title>Default</ows:Title><ows:Identifier>normal</ows:Identifier></Style>\n"
            let native: TileEncoding = m.format == .jpeg ? .jpeg : .webp
            let formats = [native] + TileEncoding.allCases.filter { $0 != native }
            for f in formats { x += "      <Format>\(f.mimeType)</Format>\n" }
            for p in group {
                let pm = p.manifest
                // The full grid, and IGN's level-limited name when the pyramid does not span it.
                var links = [(pm.tileMatrixSet.id, 0...pm.tileMatrixSet.maxZoom)]
                if pm.minZoom != 0 || pm.maxZoom != pm.tileMatrixSet.maxZoom {
                    links.append(("\(pm.tileMatrixSet.id)_\(pm.minZoom)_\(pm.maxZoom)", pm.minZoom...pm.maxZoom))
                }
                for (id, levels) in links {
                    sets[id] = (pm.tileMatrixSet, levels)
                    x += "      <TileMatrixSetLink>\n        <TileMatrixSet>\(XML.escape(id))</TileMatrixSet>\n"
                    x += "        <TileMatrixSetLimits>\n"
                    for l in pm.levels where levels.contains(l.z) {
                        x += """
                                      <TileMatrixLimits><TileMatrix>\(l.z)</TileMatrix><MinTileRow>\(l.minRow)</MinTileRow>\
                            <MaxTileRow>\(l.maxRow)</MaxTileRow><MinTileCol>\(l.minCol)</MinTileCol><MaxTileCol>\(l.maxCol)</MaxTileCol></TileMatrixLimits>

                            """
                    }
                    x += "        </TileMatrixSetLimits>\n      </TileMatrixSetLink>\n"
                }
            }
            for f in formats {
                x += """
                          <ResourceURL format="\(f.mimeType)" resourceType="tile" \
                    template="\(XML.escape(baseURL))/wmts/1.0.0/\(XML.escape(tileset))/{Style}/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.\(f.fileExtension)"/>

                    """
            }
            x += "    </Layer>\n"
        }
        for (id, (tms, levels)) in sets.sorted(by: { $0.key < $1.key }) {
            x += "    <TileMatrixSet>\n      <ows:Identifier>\(XML.escape(id))</ows:Identifier>\n"
            if let epsg = tms.epsg { x += "      <ows:SupportedCRS>urn:ogc:def:crs:EPSG::\(epsg)</ows:SupportedCRS>\n" }
            if tms.id == "PM" && levels.lowerBound == 0 {
                x += "      <WellKnownScaleSet>urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible</WellKnownScaleSet>\n"
            }
            for z in levels {
                let t = tms.tileMatrices[z]
                x += """
                          <TileMatrix>
                            <ows:Identifier>\(z)</ows:Identifier>
                            <ScaleDenominator>\(t.scaleDenominator)</ScaleDenominator>
                            <TopLeftCorner>\(t.originX) \(t.originY)</TopLeftCorner>
                            <TileWidth>\(t.tileWidth)</TileWidth>
                            <TileHeight>\(t.tileHeight)</TileHeight>
                            <MatrixWidth>\(t.matrixWidth)</MatrixWidth>
                            <MatrixHeight>\(t.matrixHeight)</MatrixHeight>
                          </TileMatrix>

                    """
            }
            x += "    </TileMatrixSet>\n"
        }
        x += "  </Contents>\n"
        x += "  <ServiceMetadataURL xlink:href=\"\(XML.escape(baseURL))/wmts/1.0.0/WMTSCapabilities.xml\"/>\n"
        x += "</Capabilities>\n"
        return x
    }
}
