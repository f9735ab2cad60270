"""Headless Chromium for the web map's browser checks: one window size, console logs kept."""
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def start(base):
    """A driver on `base`'s page, once the page's `dallage.ready` has settled."""
    options = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(a)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_script_timeout(60)
    try:
        driver.get(base + "/")
        driver.execute_async_script(
            "const done = arguments[0]; dallage.ready.then(() => done(true), (e) => done(String(e)));")
    except Exception:
        driver.quit()
        raise
    return driver


def severe(driver):
    """The page's console errors."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
