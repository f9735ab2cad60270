"""Renders one vintage of a WMTS layer with QGIS (headless), chosen through `tileDimensions`.

Usage: qgis_wmts_time.py CAPABILITIES_URL LAYER TIME MINX MINY MAXX MAXY SIZE OUT.png
The extent is in Lambert-93 (the layer's 2154_5cm grid); prints the layer's validity and the
QGIS version as one JSON object.
"""
import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from qgis.core import (  # noqa: E402
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsDataSourceUri,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.PyQt.QtCore import QSize  # noqa: E402
from qgis.PyQt.QtGui import QColor  # noqa: E402

url, layer_id, time, minx, miny, maxx, maxy, size, out = sys.argv[1:10]
QgsApplication.setPrefixPath("/usr", True)
app = QgsApplication([], False)
app.initQgis()
uri = QgsDataSourceUri()
uri.setParam("url", url)
uri.setParam("layers", layer_id)
uri.setParam("styles", "normal")
uri.setParam("format", "image/jpeg")
uri.setParam("crs", "EPSG:2154")
uri.setParam("tileMatrixSet", "2154_5cm")
uri.setParam("tileDimensions", "Time=" + time)
layer = QgsRasterLayer(bytes(uri.encodedUri()).decode(), "wmts", "wms")
report = {"valid": layer.isValid(), "qgis": Qgis.QGIS_VERSION}
if not layer.isValid():
    report["error"] = layer.error().message()
if layer.isValid():
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:2154"))
    settings.setExtent(QgsRectangle(float(minx), float(miny), float(maxx), float(maxy)))
    settings.setOutputSize(QSize(int(size), int(size)))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    report["saved"] = job.renderedImage().save(out, "PNG")
    report["errors"] = [e.message for e in job.errors()]
app.exitQgis()
print(json.dumps(report))
