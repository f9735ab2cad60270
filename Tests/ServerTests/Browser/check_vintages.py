"""Drives the web map's vintage controls in headless Chromium: a swipe compare of two vintages.

Usage: check_vintages.py BASE_URL OUT_DIR LEFT RIGHT LON LAT
Writes screen-compare.png (LEFT | RIGHT, handle at the middle), screen-left.png and
screen-right.png (each vintage alone, in both panes), and prints one JSON object: the map's
rectangle in the screenshots, the handle's x, the vintage choices offered, and console errors.
"""
import json
import sys

import chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

base, out, left, right, lon, lat = sys.argv[1:7]
driver = chromium.start(base)
report = {}


def settled(d):
    """Every tile image of the map loaded and faded in."""
    return d.execute_script(
        "const t = [...document.querySelectorAll('img.leaflet-tile')];"
        "return t.length > 0 && t.every(i => i.complete && i.classList.contains('leaflet-tile-loaded'))"
        " && t.every(i => getComputedStyle(i).opacity === '1');")


def shot(name, l, r):
    Select(driver.find_element(By.ID, "cmp-left")).select_by_value(l)
    Select(driver.find_element(By.ID, "cmp-right")).select_by_value(r)
    driver.execute_script("dallage.setCompare();")
    WebDriverWait(driver, 30).until(settled)
    driver.save_screenshot(out + "/" + name)


try:
    report["choices"] = driver.execute_script(
        "return [...document.querySelectorAll('#vintage-selects select option')].map(o => o.textContent);")
    driver.execute_script("dallage.map.setView([%s, %s], 22, {animate: false});" % (lat, lon))
    driver.find_element(By.ID, "cmp-on").click()
    driver.execute_script("const r = document.getElementById('cmp-pos'); r.value = 50; r.dispatchEvent(new Event('input'));")
    shot("screen-compare.png", left, right)
    report["map"] = driver.execute_script(
        "const r = document.getElementById('map').getBoundingClientRect(); return [r.left, r.top, r.width, r.height];")
    report["handle"] = driver.execute_script(
        "const r = document.getElementById('cmp-handle').getBoundingClientRect(); return r.left + r.width / 2;")
    shot("screen-left.png", left, left)
    shot("screen-right.png", right, right)
    report["console"] = chromium.severe(driver)
finally:
    driver.quit()
print(json.dumps(report))
