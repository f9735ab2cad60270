"""Drives the web map in headless Chromium and prints what it saw as one JSON object.

Usage: check_page.py BASE_URL ADMIN_TOKEN PROJECT_ID OUT_DIR
"""
import base64
import json
import sys

import chromium
from selenium.webdriver.common.by import By
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.support.ui import Select, WebDriverWait

base, token, project, out = sys.argv[1:5]
driver = chromium.start(base)
report = {}
try:
    # Imagery: wait until the visible tiles have loaded.
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "const t = [...document.querySelectorAll('img.leaflet-tile')];"
        "return t.length > 0 && t.every(i => i.complete) && t.some(i => i.naturalWidth > 0);"))
    # Leaflet fades tiles in: the screenshot waits until the loaded ones are opaque.
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "const t = [...document.querySelectorAll('img.leaflet-tile-loaded')];"
        "return t.length > 0 && t.every(i => getComputedStyle(i).opacity === '1');"))
    driver.save_screenshot(out + "/screen.png")
    report["legend"] = driver.find_element(By.ID, "legend").text
    report["labels"] = driver.execute_script(
        "return [...document.querySelectorAll('label')].filter(l => l.querySelector('input,select')).length;")

    # Extract: a polygon inside the sample area, drawn programmatically, downloaded at once.
    driver.execute_script("""
        const b = dallage.map.getBounds().pad(-0.3);
        dallage.setGeometry({type: 'Polygon', coordinates: [[[b.getWest(), b.getSouth()], [b.getEast(), b.getSouth()],
          [b.getEast(), b.getNorth()], [b.getWest(), b.getSouth()]]]});""")
    report["estimate"] = driver.find_element(By.ID, "ex-estimate").text
    report["extract"] = driver.execute_async_script(
        "const done = arguments[0]; dallage.submitExtract().then(done, (e) => done(String(e)));")
    data = driver.execute_async_script(
        "const done = arguments[0]; dallage.lastDownloadBase64().then(done, (e) => done(null));")
    if data:
        with open(out + "/extract.tif", "wb") as f:
            f.write(base64.b64decode(data))

    # Administration: a token, a project card, a status step; the map follows without a reload.
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'));", field)
    driver.execute_async_script(
        "const done = arguments[0]; dallage.openProject(%s).then(() => done(true), (e) => done(String(e)));" % int(project))
    report["before"] = driver.find_element(By.ID, "card-statut").text
    Select(driver.find_element(By.ID, "step-statut")).select_by_value("disponible")
    driver.execute_script("document.getElementById('step-date').value = '2024-06-01';")
    driver.find_element(By.ID, "step-add").click()
    # The card is drawn again when the status changes: an element found just before is stale.
    # The history under it is fetched after the card: wait for both.
    WebDriverWait(driver, 20, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.ID, "card-statut").text == "Publié"
        and "status" in d.find_element(By.ID, "history").text)
    report["after"] = driver.find_element(By.ID, "card-statut").text
    report["colour"] = driver.execute_script(
        "let c = null; dallage.state.coverage.eachLayer(l => { if (l.feature.properties.id === %s) c = l.options.color; });"
        " return c;" % int(project))
    report["history"] = driver.find_element(By.ID, "history").text
    report["reloaded"] = driver.execute_script("return performance.getEntriesByType('navigation').length;")
    # A phone-sized viewport keeps the map and the panel usable.
    driver.set_window_size(390, 844)
    # Measured once the window has its new size (layout is computed when the sizes are asked).
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return window.innerWidth <= 390;"))
    report["phone"] = driver.execute_script(
        "const m = document.getElementById('map').getBoundingClientRect(), p = document.getElementById('panel').getBoundingClientRect();"
        " return [m.width, m.height, p.width, p.height];")
    report["console"] = [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
finally:
    driver.quit()
print(json.dumps(report))
